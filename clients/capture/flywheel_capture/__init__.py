"""Capture chat completions for the Data Flywheel (see README.md)."""

from flywheel_capture.capture import WORKLOAD_HEADER, Capture, CaptureTransport
from flywheel_capture.sinks import ElasticsearchSink, PostgresSink

__all__ = ["Capture", "CaptureTransport", "ElasticsearchSink", "PostgresSink", "WORKLOAD_HEADER"]
