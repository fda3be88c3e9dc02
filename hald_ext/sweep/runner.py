"""Run a planned sweep: each stage is the package's own `hald` command in a subprocess, up to `jobs`
at a time (each with `threads` CPU threads and, where there are GPUs, its own GPU), in dependency order.

A stage is done when `<stage folder>/done.json` exists; it is written atomically after the command
succeeded and its output was checked, so a killed sweep rerun with the same configuration and output
folder redoes only unfinished stages (an unfinished student run continues from its last.pth, an
unfinished relabel from its .partial file).
"""
from __future__ import annotations

import concurrent.futures as cf
import ctypes
import json
import os
import signal
import subprocess
import sys
import threading
import time

import torch

from hald_ext.sweep.plan import Plan, Stage

DONE = "done.json"


def write_json_atomic(obj, path: str) -> None:
    tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, default=str)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_done(plan: Plan, stage_id: str) -> dict | None:
    p = os.path.join(plan.root, stage_id, DONE)
    if not os.path.exists(p):
        return None
    with open(p) as f:
        return json.load(f)


def train_metrics(run_dir: str) -> dict:
    """Final and best held-out accuracy of a finished `hald train` run, from its metrics.json."""
    path = os.path.join(run_dir, "metrics.json")
    with open(path) as f:
        history = json.load(f)
    if not isinstance(history, list) or not history:
        raise ValueError(f"{path}: expected a non-empty list of per-epoch rows")
    ev = [r for r in history if r.get("eval_top1") is not None]
    last = ev[-1] if ev else {}
    return {"epochs": history[-1].get("epoch"), "top1": last.get("eval_top1"), "top5": last.get("eval_top5"),
            "eval_loss": last.get("eval_loss"), "eval_epoch": last.get("epoch"),
            "best_top1": max((r["eval_top1"] for r in ev), default=None),
            "train_seconds": round(sum(r.get("epoch_time") or 0 for r in history), 2)}


def _fmt_s(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def detect_gpus(device: str) -> list:
    if device == "cpu":
        return []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [g for g in visible.split(",") if g.strip() not in ("", "-1")]
    try:
        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:  # noqa: BLE001 - no torch / no driver: no GPUs
        return []


class Runner:
    def __init__(self, plan: Plan, jobs: int = 1, threads: int = 0, cli: list | None = None, gpus: list | None = None,
                 out=None, kinds: tuple | None = None):
        if jobs < 1:
            raise ValueError(f"--jobs must be >= 1, got {jobs}")
        self.plan = plan
        self.jobs = jobs
        self.threads = threads or max(1, (os.cpu_count() or 1) // jobs)
        self.cli = cli or [sys.executable, "-m", "hald_ext.cli"]
        self.gpus = detect_gpus(plan.config.get("device", "auto")) if gpus is None else gpus
        self.out = out or sys.stdout
        self.kinds = None if kinds is None else set(kinds)  # only stages of these kinds (None: all)
        self.procs: dict = {}  # stage id -> Popen
        self.lock = threading.Lock()
        self.durations: dict = {}  # kind -> [seconds]
        self.failed: dict = {}  # stage id -> message
        self.t0 = time.perf_counter()

    # ---------------------------------------------------------------------------- helpers
    def say(self, msg: str) -> None:
        print(f"[sweep] {msg}", file=self.out, flush=True)

    def is_done(self, stage_id: str) -> bool:
        return os.path.exists(os.path.join(self.plan.root, stage_id, DONE))

    def _env(self, slot: int, kind: str = "") -> dict:
        env = dict(os.environ)
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        # The teacher is the one stage everything waits for: it gets every core while it runs.
        threads = max(self.threads, os.cpu_count() or 1) if kind == "teacher" else self.threads
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
        if self.gpus:
            env["CUDA_VISIBLE_DEVICES"] = self.gpus[slot % len(self.gpus)]
        return env

    def _argv(self, st: Stage) -> list:
        argv = list(st.argv)
        if st.kind == "train":
            argv += ["--threads", str(self.threads)]
            if os.path.exists(os.path.join(st.output, "last.pth")):
                argv += ["--resume", st.output]  # continue an interrupted run exactly
        return argv

    # ---------------------------------------------------------------------------- one stage
    def _run_stage(self, st: Stage, slot: int) -> tuple:
        d = st.dir(self.plan.root)
        os.makedirs(d, exist_ok=True)
        argv = self._argv(st)
        with open(os.path.join(d, "stage.json"), "w") as f:
            json.dump({"id": st.id, "kind": st.kind, "options": st.options, "argv": ["hald", *argv],
                       "deps": st.deps}, f, indent=1, default=str)
        t = time.perf_counter()
        with open(os.path.join(d, "log.txt"), "a") as log:
            log.write(f"$ hald {' '.join(argv)}\n")
            log.flush()
            with self.lock:
                proc = subprocess.Popen(self.cli + argv, stdout=log, stderr=subprocess.STDOUT,
                                        env=self._env(slot, st.kind), stdin=subprocess.DEVNULL,
                                        preexec_fn=_die_with_parent if sys.platform == "linux" else None)
                self.procs[st.id] = proc
            rc = proc.wait()
            with self.lock:
                self.procs.pop(st.id, None)
        seconds = time.perf_counter() - t
        if rc != 0:
            return False, f"exit status {rc} (log: {os.path.join(d, 'log.txt')})", seconds
        if not os.path.exists(st.output):
            return False, f"finished but wrote no {st.output}", seconds
        record = {"id": st.id, "kind": st.kind, "seconds": round(seconds, 2), "argv": ["hald", *argv],
                  "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        if st.kind == "train":
            try:
                record["metrics"] = train_metrics(st.output)
            except (OSError, ValueError, KeyError) as e:
                return False, f"no usable metrics.json: {e}", seconds
        write_json_atomic(record, os.path.join(d, DONE))
        return True, record, seconds

    # ---------------------------------------------------------------------------- the loop
    def _estimate_left(self, left: list) -> str:
        """Remaining time from the mean duration of each kind of stage so far (this session's and
        earlier sessions' done.json); kinds not timed yet are named instead of guessed."""
        if not left:
            return "time left: 0s"
        known = {k: sum(v) / len(v) for k, v in self.durations.items() if v}
        kinds = [self.plan.stages[s].kind for s in left]
        untimed = sorted({k for k in kinds if k not in known})
        total = sum(known[k] for k in kinds if k in known)
        if untimed and not total:
            return "time left: unknown until a " + " / ".join(untimed) + " stage finishes"
        msg = f"~{_fmt_s(total / self.jobs)} left"
        if untimed:
            msg += " + " + ", ".join(f"{kinds.count(k)} {k} stage(s) not timed yet" for k in untimed)
        return msg

    def _progress(self, pending: list) -> None:
        runs = [r.train for r in self.plan.runs]
        done = sum(self.is_done(r) for r in runs)
        failed = sum(r in self.failed for r in runs)
        stages_done = sum(self.is_done(s) for s in self.plan.stages)
        left = [s for s in pending]
        msg = (f"runs {done}/{len(runs)} done, {len(runs) - done - failed} left"
               + (f", {failed} failed" if failed else "")
               + f" | stages {stages_done}/{len(self.plan.stages)} ({len(self.procs)} running)"
               + f" | elapsed {_fmt_s(time.perf_counter() - self.t0)}, {self._estimate_left(left)}")
        self.say(msg)

    def run(self) -> int:
        """Run every unfinished stage; returns 0 when all are done, 1 when some failed, 130 when
        interrupted (SIGINT / SIGTERM: running commands are stopped, finished ones stay done)."""
        for s in self.plan.stages.values():  # seed the time estimate with earlier sessions' stages
            rec = read_done(self.plan, s.id)
            if rec and "seconds" in rec:
                self.durations.setdefault(s.kind, []).append(float(rec["seconds"]))
        wanted = [s for s, st in self.plan.stages.items() if self.kinds is None or st.kind in self.kinds]
        pending = [s for s in wanted if not self.is_done(s)]
        skipped = len(wanted) - len(pending)
        self.say(f"{len(pending)} stage(s) to run, {skipped} already done; {self.jobs} job(s) x {self.threads} "
                 f"thread(s)" + (f", GPUs {','.join(self.gpus)}" if self.gpus else ""))
        old = None
        if threading.current_thread() is threading.main_thread():
            old = signal.signal(signal.SIGTERM, _raise_interrupt)
        slots = list(range(self.jobs))
        running: dict = {}  # future -> (stage id, slot)
        pool = cf.ThreadPoolExecutor(max_workers=self.jobs)
        try:
            while pending or running:
                blocked = [s for s in pending if any(d in self.failed for d in self.plan.stages[s].deps)]
                while blocked:  # everything downstream of a failure, transitively
                    for s in blocked:
                        self.failed[s] = "a stage it needs failed"
                        pending.remove(s)
                    blocked = [s for s in pending if any(d in self.failed for d in self.plan.stages[s].deps)]
                for s in list(pending):
                    if not slots:
                        break
                    st = self.plan.stages[s]
                    if all(self.is_done(d) for d in st.deps):
                        slot = slots.pop(0)
                        pending.remove(s)
                        running[pool.submit(self._run_stage, st, slot)] = (s, slot)
                if not running:
                    break
                finished, _ = cf.wait(list(running), return_when=cf.FIRST_COMPLETED)
                for fut in finished:
                    s, slot = running.pop(fut)
                    slots.append(slot)
                    ok, info, seconds = fut.result()
                    kind = self.plan.stages[s].kind
                    if ok:
                        self.durations.setdefault(kind, []).append(seconds)
                        extra = ""
                        if kind == "train" and info["metrics"].get("top1") is not None:
                            extra = f", top-1 {info['metrics']['top1']:.2f} %"
                        self.say(f"done {s} in {_fmt_s(seconds)}{extra}")
                    else:
                        self.failed[s] = info
                        self.say(f"FAILED {s}: {info}")
                    self._progress(pending + [r for r, _ in running.values()])
        except KeyboardInterrupt:
            self.say("interrupted: stopping running commands (finished stages stay done; rerun to continue)")
            self._stop_all()
            pool.shutdown(wait=True, cancel_futures=True)
            return 130
        finally:
            if old is not None:
                signal.signal(signal.SIGTERM, old)
        pool.shutdown(wait=True)
        if self.failed:
            for s, why in self.failed.items():
                self.say(f"not done: {s}: {why}")
            return 1
        return 0

    def _stop_all(self) -> None:
        with self.lock:
            procs = list(self.procs.values())
        for p in procs:
            if p.poll() is None:
                p.terminate()
        deadline = time.time() + 15
        for p in procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                p.kill()


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def _die_with_parent():  # pragma: no cover - runs in the child between fork and exec
    """Linux: the command gets SIGTERM when the sweep dies, even by SIGKILL, so a rerun never races an
    orphaned command writing the same files."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
