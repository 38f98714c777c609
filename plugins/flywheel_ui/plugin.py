"""Registers the flywheel page with Airflow 3: a FastAPI app served by the api-server at /flywheel
(under Airflow's authentication), an external view that puts it in the UI's navigation,
embedded in the UI's frame at /plugin/flywheel, and a root middleware that records refused answers
to reviews.

Installed as the ``airflow.plugins`` entry point of this project (pyproject.toml), so any Airflow
with the package installed loads it; the plugins folder does not import it a second time
(plugins/.airflowignore).
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from flywheel_ui.app import app
from flywheel_ui.audit import RecordRefusedReviewAnswers

URL_PREFIX = "/flywheel"


class FlywheelUIPlugin(AirflowPlugin):
    name = "flywheel"
    fastapi_apps = [{"app": app, "url_prefix": URL_PREFIX, "name": "Data flywheel"}]
    # Answers to a review that Airflow refuses (not an assigned reviewer, answered already) are
    # recorded in the flywheel's review_attempts, whichever client sent them.
    fastapi_root_middlewares = [{"middleware": RecordRefusedReviewAnswers, "args": [], "kwargs": {},
                                 "name": "flywheel: record refused review answers"}]

    external_views = [{
        "name": "Data flywheel",
        "href": f"{URL_PREFIX}/",
        "destination": "nav",
        "url_route": "flywheel",
        "category": "browse",
    }]
