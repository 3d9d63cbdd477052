"""The targets of issues 8 and 17, checked against a run's figures, and the console table."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

RSS_LIMIT_MIB = 150.0


@dataclass(frozen=True)
class Target:
    name: str
    limit: str
    value: float | None
    passed: bool

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "limit": self.limit, "value": self.value, "pass": self.passed}


def _le(name: str, value: float | None, limit: float, shown: str) -> Target:
    return Target(name, shown, value, value is not None and value <= limit)


def _ge(name: str, value: float | None, limit: float, shown: str) -> Target:
    return Target(name, shown, value, value is not None and value >= limit)


def peak_rss_mib(results: dict[str, Any]) -> float | None:
    memory = (results.get("growth") or {}).get("memory") or (results.get("ingest") or {}).get(
        "memory"
    )
    if not memory:
        return None
    peaks = [p["peak_mib"] for p in memory["web_processes"]]
    peaks.append(memory["worker_process"]["peak_mib"])
    return max(peaks)


def targets(results: dict[str, Any]) -> list[Target]:
    ingest = results.get("ingest") or {}
    baseline = results.get("baseline") or {}
    backlog = results.get("backlog") or {}
    growth = results.get("growth") or {}
    errors = sum(
        int(section.get("error_count", 0))
        for section in results.values()
        if isinstance(section, dict)
    )
    found = [Target("errors", "= 0", errors, errors == 0)]
    floor = results.get("floor") or {}
    for store, label in (("sqlite", "SQLite"), ("postgresql", "PostgreSQL")):
        run = (floor.get("runs") or {}).get(f"bridge_{store}")
        if not run:
            continue
        found.append(
            _ge(
                f"ingest / floor, requests per second, {label}",
                floor["ratio_to_floor"][f"bridge_{store}"],
                0.5,
                ">= 0.5",
            )
        )
        found.append(
            _le(
                f"ingest p99 (ms), {label}, 16 connections", run["latency_ms"]["p99"], 50.0, "<= 50"
            )
        )
    if ingest:
        found.append(
            _le(
                "answer p99 (ms), concurrency 16",
                ingest["answers"]["latency_ms"]["p99"],
                25.0,
                "<= 25",
            )
        )
    if ingest and baseline:
        ratio = (
            round(ingest["end_to_end_seconds"] / baseline["seconds"], 3)
            if baseline["seconds"]
            else None
        )
        results.setdefault("ratios", {})["end_to_end_to_baseline"] = ratio
        found.append(_le("end to end / baseline", ratio, 1.25, "<= 1.25"))
    if ingest:
        found.append(
            _le(
                "Directus requests per event, live",
                ingest["directus_requests"]["per_event"],
                3.0,
                "<= 3",
            )
        )
    requests_ = results.get("requests") or {}
    if requests_:
        found.append(
            _le(
                "refund requests: bridge time / direct Directus work",
                requests_["ratio_to_baseline"],
                1.25,
                "<= 1.25",
            )
        )
    if backlog:
        found.append(
            _le(
                "Directus requests per event, backlog",
                backlog["directus_requests"]["per_event"],
                1.5,
                "<= 1.5",
            )
        )
        found.append(
            _ge("drain rate / raw Directus rate", backlog["drain_to_raw_ratio"], 0.8, ">= 0.8")
        )
    if growth:
        found.append(
            _le(
                "time per event, largest N / smallest N",
                growth["largest_to_smallest"],
                1.2,
                "<= 1.2",
            )
        )
    rss = peak_rss_mib(results)
    if rss is not None:
        found.append(
            _le("peak RSS per process (MiB)", rss, RSS_LIMIT_MIB, f"<= {RSS_LIMIT_MIB:.0f}")
        )
    return found


def table(results: dict[str, Any], checked: list[Target]) -> str:
    lines: list[str] = []

    def row(name: str, value: Any) -> None:
        lines.append(f"  {name:<48} {value}")

    floor = results.get("floor")
    if floor:
        lines.append(
            f"0. ingest against the floor: {floor['seconds']:.0f} s each, in {floor['rounds']} "
            "rounds (floor, SQLite, PostgreSQL, then back), "
            f"{floor['concurrency']} connections, wrk"
        )
        for name, run in floor["runs"].items():
            latency = run["latency_ms"]
            ratio = floor["ratio_to_floor"].get(name)
            row(
                f"{name}: requests/s, p50 / p99 (ms)",
                f"{run['per_second']}, {latency['p50']} / {latency['p99']}"
                + (f"  (x{ratio} of the floor)" if ratio is not None else "")
                + f"  CPU {run.get('cpu_ms_per_request')} ms/request"
                + (
                    "  rounds "
                    + ", ".join(str(part["per_second"]) for part in run["rounds"])
                    + "/s"
                    if run.get("rounds")
                    else ""
                ),
            )
    ingest = results.get("ingest")
    if ingest:
        lines.append(f"1. webhook ingest: N={ingest['n']}, concurrency {ingest['concurrency']}")
        answers = ingest["answers"]
        latency = answers["latency_ms"]
        row("answers per second", answers["per_second"])
        row(
            "answer latency p50 / p95 / p99 (ms)",
            f"{latency['p50']} / {latency['p95']} / {latency['p99']}",
        )
        row("every order updated in Directus after (s)", ingest["orders_updated_seconds"])
        row("everything done (orders, items, e-mails) (s)", ingest["end_to_end_seconds"])
        row("Directus requests per event", _requests(ingest["directus_requests"]))
        row("e-mails", ingest["mails"])
        row("errors", ingest["error_count"])
    baseline = results.get("baseline")
    if baseline:
        lines.append(f"2. baseline: the same N={baseline['n']} results straight to Directus")
        row("seconds (3 requests per event)", baseline["seconds"])
        row("events per second", baseline["events_per_second"])
        row("bridge end to end / baseline", results.get("ratios", {}).get("end_to_end_to_baseline"))
    requests_ = results.get("requests")
    if requests_:
        lines.append(
            f"3. refund requests: N={requests_['n']}, concurrency {requests_['concurrency']}, "
            f"{requests_.get('rounds', 1)} rounds alternating with the direct work"
        )
        latency = requests_["latency_ms"]
        row("requests per second", requests_["per_second"])
        row(
            "latency p50 / p95 / p99 (ms)",
            f"{latency['p50']} / {latency['p95']} / {latency['p99']}",
        )
        row("Directus requests per refund", _requests(requests_["directus_requests"]))
        row("direct read + create, per second", requests_["baseline"]["per_second"])
        row("bridge time / direct time", requests_["ratio_to_baseline"])
        for label, run_ in (("through the bridge", requests_), ("direct", requests_["baseline"])):
            cpu = run_.get("cpu_ms_per_request") or {}
            row(
                f"CPU ms per refund, {label}",
                " / ".join(f"{name} {value}" for name, value in cpu.items() if value),
            )
            row(f"Directus busy share, {label}", run_.get("directus_busy"))
    chain = results.get("chain")
    if chain:
        lines.append(
            f"3b. the refund chain without the bridge: N={chain['n']} a run, concurrency "
            f"{chain['concurrency']}, {chain['rounds']} rounds alternating with the direct work"
        )
        for run_ in chain["runs"].values():
            burnt = f"{run_['burn_ms_per_refund']:g} ms of CPU burnt per refund"
            row(f"chain / direct, {burnt}", run_["ratio_to_baseline"])
            row(
                "  per second, chain / direct",
                f"{run_['per_second']} / {run_['direct_per_second']}",
            )
            row(
                "  Directus busy share, chain / direct",
                f"{run_['directus_busy']} / {run_['direct_directus_busy']}",
            )
    backlog = results.get("backlog")
    if backlog:
        lines.append(f"4. backlog: N={backlog['n']} accepted while Directus was stopped")
        row("accepted per second (Directus down)", backlog["accepted"]["per_second"])
        row("drain after Directus is back (s)", backlog["drain_seconds"])
        row("drain events per second", backlog["drain_events_per_second"])
        row("Directus requests per event", _requests(backlog["directus_requests"]))
        row("raw Directus rate, same work (events/s)", backlog["raw"]["events_per_second"])
        row("drain rate / raw rate", backlog["drain_to_raw_ratio"])
    growth = results.get("growth")
    if growth:
        lines.append("5. growth")
        for n, value in growth["seconds_per_event_ms"].items():
            row(f"N={n}: ms per event (end to end)", value)
        row("largest / smallest", growth["largest_to_smallest"])
    memory = (growth or {}).get("memory") or (ingest or {}).get("memory")
    if memory:
        for process in memory["web_processes"]:
            row(f"web {process['role']} pid {process['pid']} peak RSS (MiB)", process["peak_mib"])
        row("worker peak RSS (MiB)", memory["worker_process"]["peak_mib"])
    lines.append("targets")
    for target in checked:
        verdict = "PASS" if target.passed else "FAIL"
        lines.append(f"  {verdict}  {target.name:<46} {target.value}  (target {target.limit})")
    return "\n".join(lines)


def _requests(counted: dict[str, Any]) -> str:
    shown = f"{counted['per_event']}"
    if "directus_log_per_event" in counted:
        shown += (
            f" (Directus's log; the bridge's metrics say {counted['bridge_metrics_per_event']})"
        )
    else:
        shown += " (the bridge's metrics)"
    return shown
