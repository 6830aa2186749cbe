"""Worker processes that cannot hang their parent: an ordered pool with one pipe per worker, and
the bounded ending of a child (close, then terminate, then kill).

Why not `multiprocessing.Pool`: its workers share one task queue guarded by a lock, its
`terminate()` joins workers that may wait on that lock forever, a worker killed by the kernel
(out of memory) leaves its task unanswered and the parent waiting, and a forked worker inherits
the parent's Python signal handlers (adaptkit's raise `Interrupted` in every child). Here:

- each worker has its own pipe and at most one task; the parent waits on the pipes and the
  workers' process sentinels together, so a worker that dies is seen at once (`WorkerDied`);
- a worker's signal handling is its own from its first instruction: SIGTERM ends it (the default
  action), SIGINT and SIGHUP are ignored (a Ctrl-C or a closed terminal reaches the whole process
  group; the parent decides and ends its workers). Signals are blocked in the parent while it
  forks, so none lands in the window before the child has reset them;
- a forked worker closes the parent's ends of every pipe it inherited, so a worker whose parent
  died (SIGKILL) reads end-of-file and exits instead of waiting forever;
- a task unanswered after `task_timeout` seconds (a worker stuck, not dead) fails the same way;
- shutting down sends each worker an end marker and joins it with a bound; a worker still alive
  then is terminated, then killed. An abort (an error, an interrupt) terminates at once.
"""

from __future__ import annotations

import os
import signal
import time
from collections import deque
from multiprocessing import connection
from typing import Any, Callable, Iterable, Iterator

from adaptkit.errors import AdaptkitError

GRACE_S = 10.0  # how long a closing worker may take to finish before it is terminated
KILL_S = 3.0  # how long a terminated worker may take to die before it is killed
_PARENT_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}


class WorkerDied(AdaptkitError):
    """A worker process ended without answering (killed, out of memory, crashed) or gave no
    answer within the pool's task timeout: exit code 1."""


def child_signals() -> None:
    """The signal handling of a worker process: SIGTERM's default action (end), SIGINT and SIGHUP
    ignored, no Python-level handler inherited from the parent; then unblocks what the parent blocked."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _PARENT_SIGNALS)


def end_process(process, grace: float = GRACE_S) -> None:
    """Wait at most `grace` seconds for `process` (multiprocessing.Process or subprocess.Popen) to
    end, then terminate it (SIGTERM), then kill it (SIGKILL); never waits without a bound."""
    wait = process.join if hasattr(process, "join") else _popen_wait(process)
    alive = process.is_alive if hasattr(process, "is_alive") else (lambda: process.poll() is None)
    wait(grace)
    if alive():
        process.terminate()
        wait(KILL_S)
    if alive():
        process.kill()
        wait(KILL_S)


def _popen_wait(process) -> Callable[[float], None]:
    import subprocess

    def wait(timeout: float) -> None:
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            pass

    return wait


def death_note(exitcode: int | None) -> str:
    """How a process ended, in words: 'was killed by SIGKILL', 'exited with code 3'."""
    if exitcode is None:
        return "is still running"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        hint = " (out of memory? the kernel's OOM killer sends SIGKILL)" if -exitcode == signal.SIGKILL else ""
        return f"was killed by {name}{hint}"
    return f"exited with code {exitcode}"


def _serve(conn, close_fds: list[int], function: Callable, initializer: Callable | None, initargs: tuple) -> None:
    """A worker's life: answer (ok, value) for each task until the end marker or end-of-file."""
    child_signals()
    for fd in close_fds:  # the parent's ends inherited through fork: their EOF must reach the workers
        try:
            os.close(fd)
        except OSError:
            pass
    if initializer is not None:
        initializer(*initargs)
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):  # the parent is gone
            return
        if task is None:
            return
        try:
            reply = (True, function(task))
        except BaseException as exc:  # sent back and raised in the parent
            reply = (False, exc)
        try:
            conn.send(reply)
        except (OSError, ValueError):
            return
        except Exception as exc:  # an exception that does not pickle
            conn.send((False, AdaptkitError(f"{type(exc).__name__}: {exc}")))


class WorkerPool:
    """`num_proc` processes applying `function` to tasks, results in task order (`imap`), at most
    `num_proc` tasks running and `window` submitted ahead of the one the caller waits for.
    `context` is how workers start: 'fork' costs milliseconds; 'forkserver' and 'spawn' pickle the
    initargs and re-import the modules in every worker (seconds) and need `__main__` guarded."""

    def __init__(self, function: Callable, num_proc: int, initializer: Callable | None = None, initargs: tuple = (),
                 name: str = "worker process", context: str = "fork", task_timeout: float | None = None):
        import multiprocessing

        self.name, self.window, self.task_timeout = name, num_proc + 1, task_timeout
        self.started: dict[int, float] = {}
        self.workers: list[tuple[Any, Any]] = []  # (process, the parent's end of its pipe)
        ctx = multiprocessing.get_context(context)
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, _PARENT_SIGNALS)
        try:
            for _ in range(num_proc):
                mine, theirs = ctx.Pipe()
                inherited = [c.fileno() for _, c in self.workers] + [mine.fileno()] if context == "fork" else []
                process = ctx.Process(target=_serve, args=(theirs, inherited, function, initializer, initargs), daemon=True)
                process.start()
                theirs.close()
                self.workers.append((process, mine))
        except BaseException:
            self.abort()
            raise
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)

    def imap(self, tasks: Iterable) -> Iterator:
        """Results of `tasks` in order. Closing the iterator early waits for the running tasks
        (watching their workers); an error or interrupt inside aborts the pool."""
        tasks, idle, busy, done = iter(tasks), deque(range(len(self.workers))), {}, {}
        submitted = yielded = 0
        exhausted = False
        try:
            while True:
                while idle and not exhausted and submitted - yielded < self.window:
                    task = next(tasks, _END)
                    if task is _END:
                        exhausted = True
                        break
                    worker = idle.popleft()
                    self._send(worker, task)
                    busy[worker], submitted = submitted, submitted + 1
                if yielded in done:
                    value = done.pop(yielded)
                    yielded += 1
                    yield value
                elif exhausted and yielded == submitted:
                    return
                else:
                    for worker, value in self._wait(list(busy)):
                        done[busy.pop(worker)] = value
                        idle.append(worker)
        except GeneratorExit:
            self._drain(list(busy))
            raise
        except BaseException:
            self.abort()
            raise

    def _send(self, worker: int, task: Any) -> None:
        process, conn = self.workers[worker]
        self.started[worker] = time.monotonic()
        try:
            conn.send(task)
        except (BrokenPipeError, ConnectionResetError):
            process.join(KILL_S)
            raise self._died(process) from None

    def _wait(self, busy: list[int]) -> list[tuple[int, Any]]:
        """Replies of the busy workers that have one; a dead worker (any, busy or idle) raises WorkerDied."""
        conns = {self.workers[w][1]: w for w in busy}
        sentinels = {p.sentinel: p for p, _ in self.workers}
        ready = connection.wait(list(conns) + list(sentinels), self._time_left(busy))
        if not ready:
            late = min(busy, key=self.started.__getitem__)
            raise WorkerDied(f"a {self.name} (pid {self.workers[late][0].pid}) gave no answer in {self.task_timeout:.0f}s")
        replies = []
        for conn in ready:
            if conn in conns:
                try:
                    ok, value = conn.recv()
                except (EOFError, OSError):
                    continue  # its sentinel tells how it died
                if not ok:
                    raise value
                replies.append((conns[conn], value))
        for item in ready:
            if item in sentinels and not replies:
                sentinels[item].join(KILL_S)
                raise self._died(sentinels[item])
        return replies

    def _time_left(self, busy: list[int]) -> float | None:
        if self.task_timeout is None or not busy:
            return None
        return max(0.0, min(self.started[w] for w in busy) + self.task_timeout - time.monotonic())

    def _died(self, process) -> WorkerDied:
        return WorkerDied(f"a {self.name} (pid {process.pid}) {death_note(process.exitcode)}")

    def _drain(self, busy: list[int]) -> None:
        while busy and self.workers:
            for worker, _ in self._wait(busy):
                busy.remove(worker)

    def close(self) -> None:
        """End every worker: the end marker, a bounded join, then terminate and kill."""
        for _, conn in self.workers:
            try:
                conn.send(None)
            except OSError:
                pass
        self._end(GRACE_S)

    def abort(self) -> None:
        """End every worker now: terminate, a bounded join, kill."""
        for process, _ in self.workers:
            if process.is_alive():
                process.terminate()
        self._end(KILL_S)

    def _end(self, grace: float) -> None:
        for process, conn in self.workers:
            end_process(process, grace)
            conn.close()
        self.workers = []


_END = object()
