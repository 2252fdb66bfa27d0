"""Operator benchmark on the real control plane (kube-apiserver + etcd from `make k8s`, tests/kubeenv.py):
the operator as the chart runs it (`edgetune-operator`, its RBAC, namespace-scoped, default resync), three
figures with the goals of issue 21.

1. Burst: N FineTuneJobs (500) applied at once from 16 client threads; jobs launched per second (N over the
   time from the first apply to the last RayJob, seen by a watch), against a ceiling measured on the same
   control plane in the same run: a bare client that watches the same applies and makes exactly the writes
   one launch makes (the operator's own render functions: ServiceAccount, Role, RoleBinding, two
   NetworkPolicies, PodDisruptionBudget, ConfigMap, Ray token Secret, RayJob, the status patch, the Event),
   from 16 threads as the operator's reconcile workers, with no reads and no decisions. The two sides
   alternate over `--repeats`; goal: operator / ceiling >= 0.8 over the whole spread. Also measured: the
   ceiling without the three per-job RBAC objects, what dropping them (issue 21's TokenReview design) buys.
2. Steady state: 1,000 jobs launched and Running (their RayJobs' status played as KubeRay sets it), each
   reporting progress as its Ray driver would (a merge patch of status.progress every 10 s: 100 patches/s in
   all), then one new apply every 200 ms for 60 s: apply -> RayJob p50/p99. Goal p99 < 0.3 s.
3. Memory: the operator's RSS with 100 and with 1,000 jobs Running (the same process, before step 2's
   window): the marginal KB per job and RSS(1000). Goals <= 30 KB/job and <= 160 MB. `--tracemalloc` runs
   the same under tracemalloc (bench/traced_operator.py) and prints the allocation sites of the growth from
   100 to 1,000 jobs: a diagnosis, slower, not a figure.

Everything the bench client does runs on the same 2 cores as the API server and the operator: the simulated
trainers' 100 patches/s cost this process CPU a real cluster spends on other machines, so the steady-state
figure is a pessimistic one.

    .venv/bin/python bench/bench_operator.py               # burst 500 x 2 repeats; 1,000 jobs steady (~12 min)
    .venv/bin/python bench/bench_operator.py --quick       # burst 50, 100 jobs steady, 15 s window (smoke)
    .venv/bin/python bench/bench_operator.py --full        # 3 repeats; 2,000 jobs steady
    .venv/bin/python bench/bench_operator.py --tracemalloc # also the allocation sites of the growth
"""

from __future__ import annotations

import json
import queue
import secrets
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import common
import kubernetes.client
import kubernetes.watch
import proctime
import yaml
from proctime import ProcessCpu

common.use_repo_paths()
ROOT = common.ROOT

from ftjcluster import GROUP, PLURAL, VERSION, Cluster  # noqa: E402
from kubeenv import ControlPlane, unique_name  # noqa: E402
from operatorproc import OperatorProcess, grant_operator  # noqa: E402

from edgetune_operator.api import FineTuneJobSpec  # noqa: E402
from edgetune_operator.identity import LABEL_JOB, JobRef  # noqa: E402
from edgetune_operator.kubeapi import Kube  # noqa: E402
from edgetune_operator.render import (  # noqa: E402
    OperatorDefaults,
    rayjob_name,
    render_config_map,
    render_job_safeguards,
    render_rayjob,
    render_trainer_rbac,
)
from edgetune_operator.security import render_ray_auth_secret  # noqa: E402

CRDS = [
    ROOT / "crds" / "finetunejobs.edgetune.dev.yaml",
    ROOT / "tests" / "fixtures" / "kuberay" / "v1.7.0" / "ray.io_rayjobs.yaml",
]
TRAINER_IMAGE = "registry.test/edgetune-trainer:0.1.0"  # what OperatorProcess passes
CHART_RESYNC_SECONDS = "30"  # charts/edgetune/values.yaml resyncSeconds
THREADS = 16  # the operator's reconcile workers (handlers.py) and the bare launcher's
BURST_GOAL = 0.8
P99_GOAL_S = 0.3
KB_PER_JOB_GOAL = 30.0
RSS_GOAL_MB = 160.0
REPORT_EVERY_S = 10.0  # the head's StatusReporter: training/status_report.py PROGRESS_EVERY_S
SIZES = {
    "quick": {"burst": 50, "repeats": 1, "steady": 100, "window_s": 15},
    "default": {"burst": 500, "repeats": 2, "steady": 1000, "window_s": 60},
    "full": {"burst": 500, "repeats": 3, "steady": 2000, "window_s": 60},
}
APPLY_EVERY_S = 0.2


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    seconds = proctime.cpu_seconds(pid)
    if seconds is None:
        raise RuntimeError(f"process {pid} is gone")
    return seconds


def job(name: str) -> dict[str, Any]:
    document = yaml.safe_load((ROOT / "examples" / "bert-imdb.yaml").read_text())
    document["metadata"] = {"name": name}
    return document


def client_with_pool(plane: ControlPlane) -> kubernetes.client.ApiClient:
    """An admin client whose connection pool serves THREADS threads at once."""
    client = plane.api_client()
    client.configuration.connection_pool_maxsize = THREADS * 2
    client.rest_client = kubernetes.client.rest.RESTClientObject(client.configuration)
    return client


def watch_added(
    custom: kubernetes.client.CustomObjectsApi,
    group: str,
    namespace: str,
    plural: str,
    stop: threading.Event,
) -> Iterator[dict[str, Any]]:
    """Every object of a kind in `namespace` once, as it is ADDED, until `stop`. Each 5 s watch resumes
    from the last resourceVersion seen: a watch started without one replays every existing object as
    ADDED, and at a thousand RayJobs that replay, every 5 s, was most of the API server's work."""
    version = "v1alpha1" if group == GROUP else "v1"
    resource_version: str | None = None
    seen: set[str] = set()
    while not stop.is_set():
        options: dict[str, Any] = {"timeout_seconds": 5, "allow_watch_bookmarks": True}
        if resource_version:
            options["resource_version"] = resource_version
        try:
            stream = kubernetes.watch.Watch().stream(
                custom.list_namespaced_custom_object, group, version, namespace, plural, **options
            )
            for event in stream:
                resource_version = event["object"]["metadata"]["resourceVersion"]
                if event["type"] == "ADDED" and event["object"]["metadata"]["uid"] not in seen:
                    seen.add(event["object"]["metadata"]["uid"])
                    yield event["object"]
                if stop.is_set():
                    return
        except kubernetes.client.ApiException as err:
            if err.status != 410:
                raise
            resource_version = None  # too old: replay everything; `seen` drops the repeats


class FirstSeen:
    """Watches one kind in a namespace; the time each job's first object of that kind was ADDED."""

    def __init__(self, api: kubernetes.client.ApiClient, namespace: str, group: str, plural: str, key: Any) -> None:
        self.custom = kubernetes.client.CustomObjectsApi(api)
        self.namespace, self.group, self.plural, self.key = namespace, group, plural, key
        self.seen: dict[str, float] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> FirstSeen:
        self.thread.start()
        time.sleep(0.5)
        return self

    def _run(self) -> None:
        for added in watch_added(self.custom, self.group, self.namespace, self.plural, self.stop):
            self.seen.setdefault(self.key(added), time.perf_counter())

    def wait(self, names: set[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not names <= self.seen.keys() and time.monotonic() < deadline:
            time.sleep(0.1)

    def close(self) -> None:
        self.stop.set()


def apply_all(cluster: Cluster, names: list[str]) -> dict[str, float]:
    """Apply the jobs at once from THREADS threads; the start time of each create call."""
    started: dict[str, float] = {}

    def apply(name: str) -> None:
        started[name] = time.perf_counter()
        cluster.apply(job(name))

    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(apply, names))
    return started


class BareLauncher:
    """The ceiling: on each FineTuneJob ADDED, exactly a launch's writes, from THREADS threads."""

    def __init__(self, api: kubernetes.client.ApiClient, namespace: str, with_rbac: bool) -> None:
        self.kube = Kube(api)
        self.namespace, self.with_rbac = namespace, with_rbac
        self.defaults = OperatorDefaults(trainer_image=TRAINER_IMAGE)
        self.jobs: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.custom = kubernetes.client.CustomObjectsApi(api)
        self.stop = threading.Event()
        self.workers = [threading.Thread(target=self._work, daemon=True) for _ in range(THREADS)]
        self.watcher = threading.Thread(target=self._watch, daemon=True)

    def start(self) -> BareLauncher:
        for thread in [*self.workers, self.watcher]:
            thread.start()
        time.sleep(0.5)
        return self

    def _watch(self) -> None:
        for added in watch_added(self.custom, GROUP, self.namespace, PLURAL, self.stop):
            self.jobs.put(added)

    def _work(self) -> None:
        while (document := self.jobs.get()) is not None:
            self.launch(document)

    def launch(self, document: dict[str, Any]) -> None:
        meta = document["metadata"]
        ref = JobRef(meta["name"], meta["namespace"], meta["uid"])
        spec = FineTuneJobSpec.model_validate(document["spec"], by_alias=True, by_name=False)
        rayjob = rayjob_name(ref.name, 1)
        objects = [
            *(render_trainer_rbac(ref) if self.with_rbac else []),
            *render_job_safeguards(ref, spec, self.defaults),
            render_config_map(ref, spec, 1, self.defaults),
            render_ray_auth_secret(ref, rayjob, 1, secrets.token_urlsafe(32)),
        ]
        for obj in objects:
            self.kube.create(obj)
        self.kube.create(render_rayjob(ref, spec, 1, self.defaults))
        self.kube.patch_job_status(document, {"phase": "Launching", "attempt": 1, "rayJobName": rayjob})
        self.kube.post_event(document, "Normal", "Launched", f"attempt 1: RayJob {rayjob}")

    def close(self) -> None:
        self.stop.set()
        for _ in self.workers:
            self.jobs.put(None)


def fresh_namespace(admin: kubernetes.client.ApiClient) -> tuple[str, Cluster]:
    """A namespace per measurement. None is ever deleted: without kube-controller-manager (see main) there
    is no namespace controller and no garbage collector working through an earlier run's thousands of
    objects while the next one is measured."""
    namespace = unique_name("bench")
    kubernetes.client.CoreV1Api(admin).create_namespace({"metadata": {"name": namespace}})
    cluster = Cluster(admin, namespace)
    cluster.create_secret()
    return namespace, cluster


def control_plane_cpu(plane: ControlPlane) -> dict[str, float]:
    return {process.name: cpu_seconds(process.popen.pid) for process in plane.processes}


def burst(
    plane: ControlPlane, admin: kubernetes.client.ApiClient, side: str, size: int, workdir: Path
) -> dict[str, Any]:
    """One burst of `size` applies, launched by the operator or by the bare client (with or without RBAC)."""
    namespace, cluster = fresh_namespace(admin)
    operator: OperatorProcess | None = None
    launcher: BareLauncher | None = None
    if side == "operator":
        grant_operator(plane, namespace)
        (workdir / namespace).mkdir()
        operator = OperatorProcess(
            plane, namespace, workdir / namespace, "--resync-seconds", CHART_RESYNC_SECONDS
        ).start()
    else:
        launcher = BareLauncher(client_with_pool(plane), namespace, with_rbac=side == "bare").start()
    watch = FirstSeen(admin, namespace, "ray.io", "rayjobs", lambda o: o["metadata"]["labels"][LABEL_JOB]).start()
    names = [f"job-{index}" for index in range(size)]
    cpu_before = control_plane_cpu(plane)
    bench_cpu_before = ProcessCpu.own_seconds()
    launcher_cpu_before = cpu_seconds(operator.process.pid) if operator and operator.process else 0.0
    try:
        applied = apply_all(cluster, names)
        watch.wait(set(names), timeout=120 + size * 0.5)
        cpu = {name: seconds - cpu_before[name] for name, seconds in control_plane_cpu(plane).items()}
        # This process: the applies and the watch on both sides, and the bare launcher on its side.
        cpu["bench client"] = ProcessCpu.own_seconds() - bench_cpu_before
        if operator and operator.process:
            cpu["operator"] = cpu_seconds(operator.process.pid) - launcher_cpu_before
    finally:
        watch.close()
        if operator:
            operator.stop()
        if launcher:
            launcher.close()
    launched = [watch.seen[name] for name in names if name in watch.seen]
    seconds = max(launched) - min(applied.values()) if launched else float("nan")
    result = {
        "side": side,
        "jobs": size,
        "launched": len(launched),
        "seconds": seconds,
        "jobs_per_second": len(launched) / seconds if launched else 0.0,
        "cpu_seconds": {name: round(value, 1) for name, value in cpu.items()},
    }
    print(
        f"burst {side}: {result['launched']}/{size} launched in {seconds:.1f} s = "
        f"{result['jobs_per_second']:.1f} jobs/s; CPU-seconds {result['cpu_seconds']}",
        flush=True,
    )
    return result


class SimulatedTrainers:
    """Every Running job's Ray driver, reporting progress every REPORT_EVERY_S, spread evenly over time."""

    def __init__(self, plane: ControlPlane, namespace: str, names: list[str]) -> None:
        self.api = client_with_pool(plane)
        self.namespace, self.names = namespace, names
        self.stop = threading.Event()
        self.sent = 0
        self.late = 0.0  # the most the schedule fell behind: the bench client's own limit
        self.threads = [threading.Thread(target=self._run, args=(part,), daemon=True) for part in range(4)]

    def start(self) -> SimulatedTrainers:
        self.started = time.monotonic()
        for thread in self.threads:
            thread.start()
        return self

    def _run(self, part: int) -> None:
        mine = self.names[part::4]
        gap = REPORT_EVERY_S / max(1, len(mine))
        pool = self.api.rest_client.pool_manager
        host = self.api.configuration.host
        step, index = 0, 0
        next_at = self.started + part * gap / 4
        while not self.stop.is_set():
            delay = next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            else:
                self.late = max(self.late, -delay)
            name = mine[index]
            body = json.dumps({"status": {"progress": {"step": step, "totalSteps": 10**6, "epoch": 0}}})
            url = f"{host}/apis/{GROUP}/{VERSION}/namespaces/{self.namespace}/{PLURAL}/{name}/status"
            pool.request("PATCH", url, body=body, headers={"Content-Type": "application/merge-patch+json"})
            self.sent += 1
            index += 1
            if index == len(mine):
                index, step = 0, step + 1
            next_at += gap

    def close(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(10)


def reconcile_count(operator: OperatorProcess) -> float:
    for line in operator.metrics().splitlines():
        if line.startswith("edgetune_reconcile_seconds_count"):
            return float(line.split()[-1])
    return float("nan")


def launch_and_run(cluster: Cluster, rayjobs: FirstSeen, names: list[str], timeout: float) -> None:
    """Apply `names`, wait for their RayJobs, play KubeRay's Running on each, wait until every job applied
    so far is Running."""
    apply_all(cluster, names)
    rayjobs.wait(set(names), timeout)
    missing = set(names) - rayjobs.seen.keys()
    if missing:
        raise RuntimeError(f"{len(missing)} of {len(names)} jobs got no RayJob in {timeout:.0f} s")

    def play(name: str) -> None:
        cluster.play_kuberay(rayjob_name(name, 1), "Running", "RUNNING")

    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(play, names))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        items = cluster.custom.list_namespaced_custom_object(GROUP, VERSION, cluster.namespace, PLURAL)["items"]
        if sum((i.get("status") or {}).get("phase") == "Running" for i in items) >= len(rayjobs.seen):
            return
        time.sleep(1)
    raise RuntimeError(f"jobs not all Running after {timeout:.0f} s")


def steady(
    plane: ControlPlane, admin: kubernetes.client.ApiClient, size: int, window_s: float, workdir: Path, traced: bool
) -> dict[str, Any]:
    namespace, cluster = fresh_namespace(admin)
    grant_operator(plane, namespace)
    (workdir / namespace).mkdir()
    launcher = [str(ROOT / "bench" / "traced_operator.py"), str(workdir / "snapshots")] if traced else None
    operator = OperatorProcess(
        plane, namespace, workdir / namespace, "--resync-seconds", CHART_RESYNC_SECONDS, launcher=launcher
    ).start()
    assert operator.process is not None
    pid = operator.process.pid
    rayjobs = FirstSeen(admin, namespace, "ray.io", "rayjobs", lambda o: o["metadata"]["labels"][LABEL_JOB]).start()
    first = max(1, size // 10)
    names = [f"job-{index}" for index in range(size)]
    result: dict[str, Any] = {"jobs": size, "traced": traced}
    trainers: SimulatedTrainers | None = None
    try:
        rss: dict[int, float] = {}
        for low, count in ((0, first), (first, size)):
            launch_and_run(cluster, rayjobs, names[low:count], timeout=300 + count * 0.5)
            # The last status patches and their events settle, kopf's idle workers exit, and one resync sweep
            # runs (after which the operator hands freed memory back: edgetune_operator/memory.py).
            time.sleep(float(CHART_RESYNC_SECONDS) + 5)
            rss[count] = rss_mb(pid)
            if traced:
                operator.snapshot(f"{count}")
            print(f"steady: {count} jobs Running, operator RSS {rss[count]:.0f} MB", flush=True)
        result["rss_mb"] = {str(k): v for k, v in rss.items()}
        result["kb_per_job"] = (rss[size] - rss[first]) * 1024 / (size - first)
        if traced:
            result["growth_sites"] = growth_sites(workdir / "snapshots", first, size)
            return result
        trainers = SimulatedTrainers(plane, namespace, names).start()
        time.sleep(REPORT_EVERY_S)  # one full round of reports before the window
        reconciles_before, cpu_before, sent_before = reconcile_count(operator), cpu_seconds(pid), trainers.sent
        applied: dict[str, float] = {}
        window_start = time.perf_counter()
        index = 0
        while time.perf_counter() - window_start < window_s:
            name = f"new-{index}"
            applied[name] = time.perf_counter()
            cluster.apply(job(name))
            index += 1
            next_at = window_start + index * APPLY_EVERY_S
            time.sleep(max(0.0, next_at - time.perf_counter()))
        rayjobs.wait(set(applied), timeout=60)
        window = time.perf_counter() - window_start
        latencies = [rayjobs.seen[n] - applied[n] for n in applied if n in rayjobs.seen]
        result.update(
            {
                "applies": len(applied),
                "launched": len(latencies),
                "p50_s": statistics.median(latencies),
                "p99_s": common.percentile(latencies, 99),
                "max_s": max(latencies),
                "progress_patches_per_s": (trainers.sent - sent_before) / window,
                "trainer_schedule_late_s": trainers.late,
                "reconciles_per_s": (reconcile_count(operator) - reconciles_before) / window,
                "operator_cpu_percent": 100 * (cpu_seconds(pid) - cpu_before) / window,
                "rss_after_window_mb": rss_mb(pid),
                # (seconds into the window, latency) per apply: a slow tail at fixed times is the resync
                "latencies": [
                    (round(applied[n] - window_start, 2), round(rayjobs.seen[n] - applied[n], 3))
                    for n in applied
                    if n in rayjobs.seen
                ],
            }
        )
        print(
            f"steady: {len(latencies)}/{len(applied)} new jobs launched, apply->RayJob p50 "
            f"{result['p50_s'] * 1000:.0f} ms, p99 {result['p99_s'] * 1000:.0f} ms; progress patches "
            f"{result['progress_patches_per_s']:.0f}/s, reconciles {result['reconciles_per_s']:.1f}/s, "
            f"operator CPU {result['operator_cpu_percent']:.0f}%",
            flush=True,
        )
        return result
    finally:
        if trainers:
            trainers.close()
        rayjobs.close()
        operator.stop()


def growth_sites(folder: Path, low: int, high: int, top: int = 15) -> list[str]:
    """The allocation sites that grew most between the two snapshots (tracemalloc, by line)."""
    import tracemalloc

    before = tracemalloc.Snapshot.load(str(folder / f"{low}.snapshot"))
    after = tracemalloc.Snapshot.load(str(folder / f"{high}.snapshot"))
    lines = []
    for stat in after.compare_to(before, "lineno")[:top]:
        frame = stat.traceback[0]
        where = frame.filename.split("site-packages/")[-1].split("/work/main/")[-1]
        lines.append(
            f"{stat.size_diff / (high - low) / 1024:6.1f} KB/job  {stat.count_diff / (high - low):6.1f} blocks/job  "
            f"{where}:{frame.lineno}"
        )
    total = sum(s.size_diff for s in after.compare_to(before, "filename"))
    lines.append(f"traced Python heap growth in all: {total / (high - low) / 1024:.1f} KB/job")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = common.parser(__doc__)
    parser.add_argument("--repeats", type=int, default=None, help="burst pairs (default 2)")
    parser.add_argument("--tracemalloc", action="store_true", help="also: allocation sites of the memory growth")
    parser.add_argument("--skip-burst", action="store_true", help="steady state and memory only")
    args = parser.parse_args(argv)
    size = common.size_name(args)
    sizes = SIZES[size]
    repeats = args.repeats or sizes["repeats"]
    started = time.time()
    bursts: list[dict[str, Any]] = []
    with (
        tempfile.TemporaryDirectory(prefix="bench-operator-") as folder,
        ControlPlane(crd_paths=CRDS, with_controllers=False) as plane,
        plane.api_client() as admin,
    ):
        workdir = Path(folder)
        if not args.skip_burst:
            for _, side in common.alternating(("operator", "bare", "bare-no-rbac"), repeats):
                bursts.append(burst(plane, admin, side, sizes["burst"], workdir))
        state = steady(plane, admin, sizes["steady"], sizes["window_s"], workdir, traced=False)
        traced = (
            steady(plane, admin, sizes["steady"], sizes["window_s"], workdir, traced=True) if args.tracemalloc else None
        )

    def rates(side: str) -> list[float]:
        return [b["jobs_per_second"] for b in bursts if b["side"] == side]

    checks: list[dict[str, Any]] = []
    if bursts:
        operator_rates, bare, no_rbac = rates("operator"), rates("bare"), rates("bare-no-rbac")
        checks.append(
            common.spread_check(
                "operator-burst",
                f"burst of {sizes['burst']}: operator launches/s / bare-client ceiling",
                [o / b for o, b in zip(operator_rates, bare, strict=True)],
                BURST_GOAL,
                figure=f"{statistics.median(operator_rates):.1f} vs {statistics.median(bare):.1f} jobs/s (medians)",
            )
        )
        checks.append(
            common.spread_check(
                "ceiling-without-rbac",
                "bare-client ceiling without the per-job ServiceAccount, Role, RoleBinding / with them",
                [n / b for n, b in zip(no_rbac, bare, strict=True)],
                None,
                figure=f"{statistics.median(no_rbac):.1f} vs {statistics.median(bare):.1f} jobs/s (medians)",
            )
        )
    else:
        checks.append(common.skipped("operator-burst", "burst: operator / ceiling", BURST_GOAL, ">=", "--skip-burst"))
    steady_size, first = sizes["steady"], max(1, sizes["steady"] // 10)
    checks += [
        common.check(
            "operator-steady-p99",
            f"apply→RayJob p99, one apply per {APPLY_EVERY_S:g} s with {steady_size} jobs Running and reporting",
            state["p99_s"],
            P99_GOAL_S,
            "<",
            unit="s",
            figure=f"p50 {state['p50_s'] * 1000:.0f} ms, p99 {state['p99_s'] * 1000:.0f} ms, max "
            f"{state['max_s'] * 1000:.0f} ms over {state['applies']} applies; progress patches "
            f"{state['progress_patches_per_s']:.0f}/s, reconciles {state['reconciles_per_s']:.1f}/s, operator CPU "
            f"{state['operator_cpu_percent']:.0f}%",
        ),
        common.check(
            "operator-kb-per-job",
            f"operator memory per job, {first} → {steady_size} jobs Running",
            state["kb_per_job"],
            KB_PER_JOB_GOAL,
            "<=",
            unit="KB",
            figure=f"RSS {state['rss_mb'][str(first)]:.0f} → {state['rss_mb'][str(steady_size)]:.0f} MB",
        ),
        common.check(
            "operator-rss",
            f"operator RSS with {steady_size} jobs Running",
            state["rss_mb"][str(steady_size)],
            RSS_GOAL_MB if steady_size == 1000 else None,
            "<=",
            unit="MB",
            figure=f"{state['rss_after_window_mb']:.0f} MB after the steady window",
        ),
    ]
    markdown = []
    if bursts:
        markdown += ["## Bursts", "", "| side | launched | seconds | jobs/s |", "|---|---:|---:|---:|"]
        markdown += [
            f"| {b['side']} | {b['launched']}/{b['jobs']} | {b['seconds']:.1f} | {b['jobs_per_second']:.1f} |"
            for b in bursts
        ]
    if traced:
        markdown += ["", "## Allocation sites of the growth (tracemalloc)", "", "```", *traced["growth_sites"], "```"]
    data = common.result(
        "operator",
        "Operator: burst launch rate vs a bare client, steady-state latency and memory at 1,000 jobs",
        f"Goals (issue 21): burst launches/s >= {BURST_GOAL} x the bare-client ceiling; steady apply→RayJob p99 < "
        f"{P99_GOAL_S} s with {steady_size} jobs reporting every {REPORT_EVERY_S:g} s; <= {KB_PER_JOB_GOAL:g} KB per "
        f"job and RSS <= {RSS_GOAL_MB:g} MB at 1,000 jobs.",
        checks,
        sizes={"size": size, **sizes, "repeats": repeats},
        details={"bursts": bursts, "steady": state, "traced": traced},
        started=started,
    )
    common.save(data, args.json_out, "\n".join(markdown))
    return 0


if __name__ == "__main__":
    sys.exit(main())
