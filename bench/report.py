"""Turn a results JSON into the chart (docs/benchmarks.png), the figures section of docs/benchmarks.md,
and a plain-text summary.

    python3 -m bench.report [bench/results/latest.json] [--docs]   # re-render without re-running
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

# The API server's and controller manager's own housekeeping, not the operator's.
BACKGROUND = ("endpoints", "leases", "api", "apis", "openapi", "endpointslices", "version")
BEGIN, END = "<!-- bench:figures:begin -->", "<!-- bench:figures:end -->"


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f} ms"


def _s(seconds: float | None, digits: int = 1) -> str:
    return "-" if seconds is None else f"{seconds:.{digits}f} s"


# ---------------------------------------------------------------- chart


def render_chart(results: dict[str, Any], path: Path) -> None:
    """A 2x2 figure: latency percentiles, throughput curves, restart, CPU by component."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(2, 2, figsize=(14, 10))
    figure.suptitle(f"servicekey-operator benchmark — {results.get('command', '')}\n"
                    f"{results.get('machine', {}).get('cpus')} CPUs, everything on one machine; "
                    f"{results.get('started', '')}", fontsize=11)
    _latency_panel(axes[0][0], results)
    _throughput_panel(axes[0][1], results)
    _restart_panel(axes[1][0], results)
    _cpu_panel(axes[1][1], results)
    figure.tight_layout(rect=(0, 0, 1, 0.95))
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=90)
    plt.close(figure)


def _latency_panel(axis: Any, results: dict[str, Any]) -> None:
    groups: list[tuple[str, dict[str, Any]]] = []
    for algorithm, stats in (results.get("latency") or {}).items():
        groups.append((f"{algorithm}\nidle", stats))
    burst = (results.get("burst") or {}).get("es256_during_burst")
    if burst:
        groups.append((f"ES256 during\n{results['burst']['rsa_keys']}xRS4096 burst", burst))
    if results.get("rotation"):
        groups.append(("rotation\n(ES256)", results["rotation"]))
    width = 0.26
    for offset, (percentile, colour) in enumerate((("p50", "#4c72b0"), ("p95", "#dd8452"), ("p99", "#c44e52"))):
        xs = [index + (offset - 1) * width for index in range(len(groups))]
        heights = [(stats.get(percentile) or 0) * 1000 for _, stats in groups]
        bars = axis.bar(xs, heights, width, label=percentile, color=colour)
        axis.bar_label(bars, fmt="%.0f", fontsize=7, padding=1)
    axis.set_xticks(range(len(groups)), [label for label, _ in groups], fontsize=8)
    axis.set_ylabel("milliseconds")
    axis.set_title("create → Ready latency (one key at a time) and rotation → new kid")
    axis.legend(fontsize=8)


def _throughput_panel(axis: Any, results: dict[str, Any]) -> None:
    colours = {"ES256": "#4c72b0", "EdDSA": "#55a868", "RS256": "#c44e52"}
    for algorithm, run in (results.get("throughput") or {}).items():
        points = run.get("ready_curve") or []
        if points:
            xs, ys = zip(*points, strict=True)
            axis.plot(xs, ys, drawstyle="steps-post", label=f"operator {algorithm}: {run['ready']}/{run['keys']} in "
                      f"{_s(run.get('all_ready_seconds') or xs[-1])} ({run.get('keys_per_second')}/s)",
                      color=colours.get(algorithm), linewidth=2)
    styles = ["--", "-.", ":"]
    for index, (workers, run) in enumerate(((results.get("floor") or {}).get("runs") or {}).items()):
        points = run.get("completion_curve") or []
        if points:
            xs, ys = zip(*points, strict=True)
            label = "sequential" if workers == "1" else f"{workers} threads"
            axis.plot(xs, ys, styles[index % len(styles)], color="black",
                      label=f"floor ES256 {label}: {_s(run['seconds'])} ({run['keys_per_second']}/s)")
    axis.set_xlabel("seconds since the first create")
    axis.set_ylabel("keys Ready")
    axis.set_title("throughput: N ServiceKeys applied at once")
    axis.legend(fontsize=7, loc="lower right")
    axis.grid(alpha=0.3)


def _restart_panel(axis: Any, results: dict[str, Any]) -> None:
    restart = results.get("restart") or {}
    timeline = restart.get("timeline") or []
    healthy = restart.get("healthy_seconds") or 0
    if timeline:
        xs, passes, *ready = zip(*timeline, strict=True)  # results before the trusted restart have no Ready
        seconds = [x + healthy for x in xs]
        axis.plot(seconds, passes, color="#8172b2", linewidth=2, label="reconcile passes")
        if ready:
            axis.plot(seconds, ready[0], color="#55a868", linewidth=2, label="keys reported Ready")
        axis.axvline(restart.get("settled_seconds") or 0, color="grey", linestyle="--", label="settled")
        axis.legend(fontsize=8, loc="lower right")
    axis.set_xlabel("seconds since the new operator process started")
    axis.set_ylabel("keys")
    axis.set_title(f"restart over {restart.get('servicekeys', '?')} Ready keys")
    text = (f"healthy {_s(healthy)}, settled {_s(restart.get('settled_seconds'))}\n"
            f"operator CPU {_s(restart.get('operator_cpu_seconds'))}\n"
            f"Vault writes: {restart.get('vault_writes', '?')}\n"
            f"ConfigMap writes: {restart.get('configmap_writes', '?')}\n"
            f"ServiceKey writes: {restart.get('servicekey_writes', '?')}")
    axis.text(0.02, 0.97, text, transform=axis.transAxes, va="top", fontsize=9,
              bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "#cccccc"})
    axis.grid(alpha=0.3)


def _cpu_panel(axis: Any, results: dict[str, Any]) -> None:
    runs = results.get("throughput") or {}
    components = ["operator", "kube-apiserver", "etcd", "openbao", "kube-controller-manager", "bench",
                  "other_processes"]
    labels, series = [], []
    for algorithm, run in runs.items():
        cpu = run.get("cpu_seconds") or {}
        labels.append(f"{algorithm}\n{run['keys']} keys")
        series.append([max(0.0, cpu.get(component, 0.0)) for component in components])
    restart = results.get("restart")
    if restart:
        labels.append(f"restart\n{restart['servicekeys']} keys")
        series.append([restart.get("operator_cpu_seconds", 0.0), 0, 0, 0, 0, 0, 0])
    bottoms = [0.0] * len(labels)
    colours = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b2", "#937860", "#cccccc"]
    for index, component in enumerate(components):
        heights = [row[index] for row in series]
        axis.bar(range(len(labels)), heights, bottom=bottoms, label=component.replace("_", " "),
                 color=colours[index])
        bottoms = [b + h for b, h in zip(bottoms, heights, strict=True)]
    for index, run in enumerate(runs.values()):
        memory = run.get("memory") or {}
        axis.text(index, bottoms[index], f"RSS {memory.get('rss_tree_mib')} MiB", ha="center", va="bottom", fontsize=8)
    if restart:
        axis.text(len(labels) - 1, bottoms[-1], f"RSS {restart['memory'].get('rss_tree_mib')} MiB", ha="center",
                  va="bottom", fontsize=8)
    axis.set_xticks(range(len(labels)), labels, fontsize=8)
    axis.set_ylabel("CPU seconds (2 cores shared by all)")
    axis.set_title("CPU seconds by component: throughput phases; restarted operator")
    axis.legend(fontsize=7)


# ---------------------------------------------------------------- markdown


def figures_markdown(results: dict[str, Any]) -> str:
    """The generated part of docs/benchmarks.md."""
    lines: list[str] = []
    env, mach = results.get("environment", {}), results.get("machine", {})
    lines += [f"Run `{results.get('command')}` on {results.get('started')}: {mach.get('cpus')} CPUs "
              f"({mach.get('cpu_model')}), Python {mach.get('python')}, kube-apiserver {env.get('kubernetes')}, "
              f"{env.get('openbao')}; etcd, kube-apiserver, controller manager, OpenBao (dev, in-memory), "
              f"the operator and the bench all on this one machine. Total {_s(results.get('total_seconds'), 0)}.",
              ""]
    loads = results.get("load_average") or {}
    if loads:
        lines += ["1-minute load average at the start and end of each phase (above ~1 means something else was "
                  "running too): " + ", ".join(f"{name} {begin}→{end}" for name, (begin, end) in loads.items()) + ".",
                  ""]
    if results.get("errors"):
        lines += ["**Phases that failed:** " + "; ".join(results["errors"]), ""]
    latency = results.get("latency") or {}
    if latency:
        lines += ["### create → Ready, one key at a time (idle operator)", "",
                  "| algorithm | n | p50 | p95 | p99 | max | first key (warm-up) | operator CPU/key |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for algorithm, stats in latency.items():
            lines.append(f"| {algorithm} | {stats['n']} | {_ms(stats['p50'])} | {_ms(stats['p95'])} | "
                         f"{_ms(stats['p99'])} | {_ms(stats['max'])} | {_ms(stats.get('first_key_seconds'))} | "
                         f"{_ms(stats.get('operator_cpu_seconds_per_key'))} |")
        lines.append("")
    rotation = results.get("rotation")
    if rotation:
        lines += [f"**Rotation** (annotation `servicekey.io/rotate` set → new `kid` in the ConfigMap, ES256, "
                  f"n={rotation['n']}): p50 {_ms(rotation['p50'])}, p95 {_ms(rotation['p95'])}, "
                  f"max {_ms(rotation['max'])}.", ""]
    burst = results.get("burst")
    if burst:
        during = burst["es256_during_burst"]
        lines += [f"**RS4096 burst**: {burst['rsa_keys']} RS256/4096-bit keys created at once were all Ready after "
                  f"{_s(burst['rsa_all_ready_seconds'])}; meanwhile ES256 create → Ready (n={during['n']}) was "
                  f"p50 {_ms(during['p50'])}, p99 {_ms(during['p99'])} against p50 {_ms(burst['es256_idle_p50'])}, "
                  f"p99 {_ms(burst['es256_idle_p99'])} idle (p99 x{burst.get('p99_ratio_burst_over_idle')}).", ""]
    throughput = results.get("throughput") or {}
    if throughput:
        lines += ["### Throughput: N ServiceKeys applied at once", "",
                  "| algorithm | keys | all Ready after | keys/s | create → Ready p50 / p95 | creates took | "
                  "operator CPU (per key) | operator RSS after | API writes/key | passes/key |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for algorithm, run in throughput.items():
            spread = run["create_to_ready"]
            cpu = run["cpu_seconds"]
            done = _s(run["all_ready_seconds"]) if run["all_ready"] else f"{run['ready']} Ready at timeout"
            lines.append(f"| {algorithm} | {run['keys']} | {done} | {run['keys_per_second']} | "
                         f"{_s(spread['p50'])} / {_s(spread['p95'])} | {_s(run['create_seconds'])} | "
                         f"{_s(cpu['operator'])} ({_ms(run['operator_cpu_seconds_per_key'])}) | "
                         f"{run['memory']['rss_tree_mib']} MiB | {run['api_write_requests_per_key']} | "
                         f"{run['operator']['reconcile_passes_per_key']} |")
        lines += ["", "CPU seconds by component over each throughput phase (2 cores = 2 CPU-seconds per second of "
                  "wall time; *other processes* is whatever else ran on the machine meanwhile):", "",
                  "| algorithm | operator | kube-apiserver | etcd | OpenBao | controller manager | bench | "
                  "other processes | wall |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for algorithm, run in throughput.items():
            cpu = run["cpu_seconds"]
            lines.append(f"| {algorithm} | {cpu['operator']} | {cpu['kube-apiserver']} | {cpu['etcd']} | "
                         f"{cpu['openbao']} | {cpu['kube-controller-manager']} | {cpu['bench']} | "
                         f"{cpu.get('other_processes', '-')} | {cpu['wall']} |")
        first = throughput.get("ES256") or next(iter(throughput.values()))
        lines += ["", f"Requests the operator made per key ({first['algorithm']}, {first['keys']} keys; "
                  "`apiserver_request_total` minus the bench's own calls, and the operator's Vault metrics):", ""]
        lines += ["| request | per key |", "| --- | --- |"]
        lines += [f"| Kubernetes `{call}` | {value} |" for call, value in first["api_requests_per_key"].items()
                  if not _background(call) and value >= 0.05]
        lines += [f"| Vault `{op}` | {value} |" for op, value in first["operator"]["vault_requests_per_key"].items()]
        events = first.get("events") or {}
        lines += ["", f"Kubernetes Events per key: {_per_key(events, first['keys'])}; "
                  f"reconcile passes per key {first['operator']['reconcile_passes_per_key']} "
                  f"(mean pass {_ms(first['operator']['mean_pass_seconds'])} under this load); "
                  f"operator log lines per key {round(first['log_lines'] / first['keys'], 1)}.", ""]
        for algorithm, run in throughput.items():
            if run.get("profile") and run["profile"].get("breakdown_percent"):
                profile = run["profile"]
                lines += [f"Where the operator's Python CPU went ({algorithm} throughput, py-spy `--gil`, "
                          f"{profile['samples']} samples): "
                          + ", ".join(f"{name} {share}%" for name, share in profile["breakdown_percent"]) + ".", ""]
    memory = results.get("memory_at_end")
    if memory:
        lines += [f"**Operator memory** with {memory['servicekeys']} ServiceKeys: RSS {memory['rss_tree_mib']} MiB "
                  f"for the process tree (main process {memory['rss_main_mib']} MiB, its peak "
                  f"{memory['peak_main_mib']} MiB); idle at start "
                  f"{(results.get('operator_start') or {}).get('memory_idle', {}).get('rss_tree_mib')} MiB.", ""]
    restart = results.get("restart")
    if restart:
        lines += ["### Restart over Ready keys", "",
                  f"A new operator over {restart['servicekeys']} Ready ServiceKeys: healthy after "
                  f"{_s(restart['healthy_seconds'])}, settled (every key reported Ready in the metrics, then no "
                  f"pass, no Vault request, no ConfigMap or ServiceKey change for 3 s) after "
                  f"{_s(restart['settled_seconds'])}, {restart['reconcile_passes']:.0f} reconcile passes, "
                  f"{_s(restart['operator_cpu_seconds'])} "
                  f"operator CPU, RSS {restart['memory']['rss_tree_mib']} MiB.", "",
                  "| writes during the restart | count | target |", "| --- | --- | --- |",
                  f"| Vault (sum of KV `current_version` after - before) | {restart['vault_writes']} | 0 |",
                  f"| ConfigMaps (resourceVersion changed) | {restart['configmap_writes']} | 0 |",
                  f"| ServiceKeys (resourceVersion changed: {restart['servicekey_writes_by_part'] or 'none'}) | "
                  f"{restart['servicekey_writes']} | 0 |",
                  f"| all API writes (`apiserver_request_total`) | {_calls(restart['api_writes'])} | |", "",
                  f"Requests during the restart: Kubernetes {_calls(restart['api_requests'])}; Vault "
                  f"{_calls(restart['operator']['vault_requests'])} "
                  f"(mean pass {_ms(restart['operator']['mean_pass_seconds'])}, "
                  f"{_ms(restart['operator_cpu_seconds'] / max(restart['servicekeys'], 1))} operator CPU per key "
                  "including start-up).", ""]
        if restart.get("profile") and restart["profile"].get("breakdown_percent"):
            lines += ["Where the restarted operator's Python CPU went (py-spy `--gil`, "
                      f"{restart['profile']['samples']} samples): "
                      + ", ".join(f"{name} {share}%" for name, share in restart["profile"]["breakdown_percent"]) + ".",
                      ""]
    floor = results.get("floor")
    if floor:
        lines += ["### The floor: the same work from a plain script", "",
                  "Per key: ES256 keygen, one KV v2 write (hvac), one ConfigMap create, one ServiceKey status "
                  "patch; the ServiceKeys exist beforehand.", "",
                  "| run | keys | took | keys/s | keygen / Vault / ConfigMap / status per key | "
                  "operator ÷ floor |", "| --- | --- | --- | --- | --- | --- |"]
        for workers, run in floor["runs"].items():
            steps = run["step_seconds_per_key"]
            label = "sequential" if workers == "1" else f"{workers} threads"
            if int(workers) == floor.get("same_concurrency_workers"):
                label += " (the operator's I/O threads)"
            lines.append(f"| {label} | {run['completed']}/{run['keys']} | {_s(run['seconds'])} | "
                         f"{run['keys_per_second']} | {_ms(steps['keygen'])} / {_ms(steps['vault_write'])} / "
                         f"{_ms(steps['configmap_create'])} / {_ms(steps['status_patch'])} | "
                         f"x{floor['ratio_operator_over_floor'].get(workers)} |")
        lines.append("")
    return "\n".join(lines)


def _background(call: str) -> bool:
    resource = call.split()[1] if len(call.split()) > 1 else ""
    return resource.split("/")[0] in BACKGROUND


def _calls(calls: dict[str, Any]) -> str:
    mine = {call: value for call, value in calls.items() if " " not in call or not _background(call)}
    return ", ".join(f"`{call}` {value:g}" for call, value in mine.items()) or "none"


def _per_key(counts: dict[str, int], keys: int) -> str:
    return ", ".join(f"{name} {round(count / keys, 2)}" for name, count in counts.items()) or "none"


def update_markdown(results: dict[str, Any], path: Path) -> None:
    """Replace the generated section of ``path`` (create the file with a skeleton if needed)."""
    generated = f"{BEGIN}\n{figures_markdown(results)}\n{END}"
    if path.exists() and BEGIN in path.read_text():
        text = path.read_text()
        head, _, rest = text.partition(BEGIN)
        _, _, tail = rest.partition(END)
        path.write_text(head + generated + tail)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("# Benchmarks\n\n" + generated + "\n\n![benchmark chart](benchmarks.png)\n")


def text_summary(results: dict[str, Any]) -> str:
    """A few lines for the terminal."""
    return "\n" + figures_markdown(results) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Re-render the chart (and with --docs the markdown) from a results file."""
    parser = argparse.ArgumentParser(prog="python3 -m bench.report")
    parser.add_argument("results", nargs="?", default=str(Path(__file__).parent / "results" / "latest.json"))
    parser.add_argument("--docs", action="store_true", help="write docs/benchmarks.png and docs/benchmarks.md")
    parser.add_argument("--chart", default="", help="where to write the PNG (default: next to the results)")
    args = parser.parse_args(argv)
    results = json.loads(Path(args.results).read_text())
    docs = Path(__file__).resolve().parent.parent / "docs"
    chart = Path(args.chart) if args.chart else (docs / "benchmarks.png" if args.docs
                                                 else Path(args.results).with_suffix(".png"))
    render_chart(results, chart)
    if args.docs:
        update_markdown(results, docs / "benchmarks.md")
    print(text_summary(results))
    print(f"chart: {chart}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
