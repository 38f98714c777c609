"""A warm start for CPU jobs of the local backend: a fork server with torch, transformers and peft
already imported.

    python -m flywheel_trainer warm-server --socket PATH

Every job of the local backend is a fresh Python process, and on a small CPU machine a fresh
process spends 6-8 CPU-seconds importing torch, transformers and peft and loading their model
classes before it reads its spec: a good share of a short base or ICL job, and of the whole CPU
demo (nine jobs). This server pays that once. For each job it forks a child that is exactly the
trainer entrypoint (``flywheel_trainer.__main__.main``) with the job's arguments, environment and
working directory, its stdout and stderr on the pipe the caller passes, in its own session (the
caller stops it with ``killpg``, as it stops a subprocess).

Protocol on the Unix socket, one job per connection: the caller sends one JSON line
``{"argv": [...], "env": {...}, "cwd": "..."}`` together with the write end of its output pipe
(SCM_RIGHTS); the server answers ``{"pid": N}`` and, when the job ends, ``{"exit": status}``
(negative: killed by that signal, as ``subprocess.Popen.returncode``). A caller that disconnects
before the job ends takes the job with it (SIGTERM, then SIGKILL).

Only for CPU: the server never touches CUDA (a process that has initialised CUDA cannot fork
safely), and the stack starts it only on a machine without GPUs. It runs with the trainer's
environment allow-list only (no Airflow secrets are inherited), and a child replaces that
environment with the job's own before the job starts.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import socket
import sys
import time
from pathlib import Path

PRELOAD = (
    "torch", "transformers", "peft", "safetensors", "fsspec",
    "transformers.models.llama.modeling_llama", "transformers.models.qwen2.modeling_qwen2",
    "flywheel_trainer.job", "flywheel_trainer.finetune", "flywheel_trainer.generate", "flywheel_trainer.chat",
)
MAX_REQUEST_BYTES = 1 << 20
REQUEST_TIMEOUT = 10.0  # seconds a caller has to send its request after connecting


def preload() -> None:
    import importlib

    for name in PRELOAD:
        importlib.import_module(name)
    # The lazy parts of transformers that loading a model and a tokenizer import on first use.
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer  # noqa: F401
    import transformers.core_model_loading  # noqa: F401


def _child(request: dict, out_fd: int, listener: socket.socket, conn: socket.socket) -> None:
    """In the forked child: become the job, run it, exit with its status (never returns)."""
    code = 1
    try:
        listener.close()
        conn.close()
        os.setsid()
        os.dup2(out_fd, 1)
        os.dup2(out_fd, 2)
        os.close(out_fd)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        os.environ.clear()
        os.environ.update({str(k): str(v) for k, v in request["env"].items()})
        os.chdir(request.get("cwd") or "/")
        import torch

        threads = os.environ.get("OMP_NUM_THREADS")
        if threads and threads.isdigit() and int(threads) > 0:
            torch.set_num_threads(int(threads))
        from flywheel_trainer.__main__ import main

        sys.argv = ["flywheel-trainer", *request["argv"]]
        code = main(list(request["argv"]))
    except SystemExit as exc:  # argparse
        code = exc.code if isinstance(exc.code, int) else 2
    except BaseException:  # noqa: BLE001 - printed as a fresh interpreter would, exit status 1
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _read_request(conn: socket.socket) -> tuple[dict, int]:
    """The caller's request and output pipe. A caller that sends nothing within REQUEST_TIMEOUT
    seconds, or not one JSON line with one descriptor, is refused (ValueError / OSError) and any
    descriptor it sent is closed: one bad caller never holds up the others (the loop is single)."""
    data, fds = b"", []
    conn.settimeout(REQUEST_TIMEOUT)
    try:
        while not data.endswith(b"\n"):
            chunk, got, _flags, _addr = socket.recv_fds(conn, 65536, 1)
            fds += got
            if not chunk:
                break
            data += chunk
            if len(data) > MAX_REQUEST_BYTES:
                break
        if len(fds) != 1 or not data.endswith(b"\n"):
            raise ValueError("expected one JSON line and one file descriptor")
        request = json.loads(data)
        if not (isinstance(request, dict) and isinstance(request.get("argv"), list)
                and all(isinstance(a, str) for a in request["argv"]) and isinstance(request.get("env"), dict)):
            raise ValueError("the request needs 'argv' (strings) and 'env' (an object)")
    except (OSError, ValueError):
        for fd in fds:
            os.close(fd)
        raise
    conn.settimeout(None)
    return request, fds[0]


def _send(conn: socket.socket, message: dict) -> None:
    try:
        conn.sendall((json.dumps(message) + "\n").encode())
    except OSError:
        pass


def _stop(pid: int) -> None:
    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done:
                return
            time.sleep(0.1)


def serve(socket_path: Path) -> int:
    preload()
    socket_path.parent.mkdir(parents=True, exist_ok=True)
    socket_path.unlink(missing_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(socket_path))
    os.chmod(socket_path, 0o600)  # only this user may start jobs
    listener.listen(16)
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    jobs: dict[int, socket.socket] = {}  # pid -> the caller's connection
    print(f"warm-server: listening on {socket_path} (pid {os.getpid()})", flush=True)
    while not stopping:
        for key, _ in selector.select(timeout=0.2):
            if key.fileobj is listener:
                conn, _addr = listener.accept()
                try:
                    request, out_fd = _read_request(conn)
                except (OSError, ValueError) as exc:
                    _send(conn, {"error": str(exc)})
                    conn.close()
                    continue
                sys.stdout.flush()
                sys.stderr.flush()
                pid = os.fork()
                if pid == 0:
                    _child(request, out_fd, listener, conn)
                os.close(out_fd)
                jobs[pid] = conn
                _send(conn, {"pid": pid})
                selector.register(conn, selectors.EVENT_READ, pid)
            else:
                pid, conn = key.data, key.fileobj
                try:
                    gone = conn.recv(1, socket.MSG_PEEK) == b""
                except OSError:
                    gone = True
                if not gone:  # callers send nothing more; drop it
                    conn.recv(4096)
                    continue
                # The caller went away before its job ended (its task was killed): so does the job.
                selector.unregister(conn)
                if jobs.pop(pid, None) is not None:
                    print(f"warm-server: the caller of job {pid} went away; stopping it", flush=True)
                    _stop(pid)
                conn.close()
        while jobs:  # reap every job that ended
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            conn = jobs.pop(pid, None)
            if conn is not None:
                _send(conn, {"exit": os.waitstatus_to_exitcode(status)})
                try:
                    selector.unregister(conn)
                except (KeyError, ValueError):
                    pass
                conn.close()
    for pid in list(jobs):
        _stop(pid)
    listener.close()
    socket_path.unlink(missing_ok=True)
    return 0
