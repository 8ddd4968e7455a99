"""Fuzzing the served OpenAPI document with schemathesis: no 5xx, and every error in OpenAI's envelope.

Starts the app (tiny, API keys on) on loopback, reads /openapi.json with a key, and for every operation draws
`--examples` cases that follow the schema (positive) and `--examples` that break it (negative), each sent with the
key; then every operation once without a key (a 401 in the envelope). Every response is checked: status < 500, and
a 4xx body is {"error": {"message", "type", "param", "code"}}. Needs schemathesis (`pip install -e .[bench]`).

    python bench/serve_fuzz.py --examples 150
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import httpx
from common import RESULTS, command, hardware, pyplot
from serving import local_app_args, local_serve

KEY = "fuzz-key-0123"
ENVELOPE = {"message", "type", "param", "code"}


def problem(response) -> str | None:
    """What is wrong with a response, or None."""
    if response.status_code >= 500:
        return f"server error {response.status_code}"
    if response.status_code >= 400:
        try:
            error = response.json()["error"]
        except (ValueError, KeyError, TypeError):
            return f"{response.status_code} without the error envelope"
        if not isinstance(error, dict) or set(error) != ENVELOPE:
            return f"{response.status_code} with error keys {sorted(error) if isinstance(error, dict) else error}"
    return None


def sender(base: str, row: dict):
    """A hypothesis test body: send the case with the key, count its status, keep its problem."""
    def send(case):
        response = case.call(base_url=base, headers={"Authorization": f"Bearer {KEY}"}, timeout=60)
        row["statuses"][response.status_code] += 1
        if (why := problem(response)) and len(row["problems"]) < 20:
            row["problems"].append({"problem": why, "curl": case.as_curl_command()[:500],
                                    "body": response.text[:300]})
    return send


def fuzz(schema, base: str, examples: int) -> list[dict]:
    from hypothesis import HealthCheck, given, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis import GenerationMode

    rows = []
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            row = {"operation": f"{operation.method.upper()} {operation.path}", "mode": mode.value,
                   "statuses": Counter(), "problems": []}

            run = settings(max_examples=examples, deadline=None, database=None, derandomize=True,
                           suppress_health_check=list(HealthCheck))(
                given(case=operation.as_strategy(generation_mode=mode))(sender(base, row)))
            try:
                run()
            except Unsatisfiable:  # nothing to break: a GET without parameters has no negative cases
                pass
            row["cases"] = sum(row["statuses"].values())
            row["statuses"] = {str(k): v for k, v in sorted(row["statuses"].items())}
            rows.append(row)
            print(f"    {row['operation']:<28} {row['mode']:<8} {row['cases']:>4} cases  {row['statuses']}  "
                  f"problems {len(row['problems'])}", flush=True)
    return rows


def without_key(doc: dict, base: str) -> list[dict]:
    """Every operation without a key: 401 in the envelope (/health, the one public route, answers)."""
    rows = []
    for path, methods in doc["paths"].items():
        for method in methods:
            url = base + path.replace("{name}", "tiny")
            response = httpx.request(method.upper(), url, json={} if method == "post" else None, timeout=60)
            rows.append({"operation": f"{method.upper()} {path}", "status": response.status_code,
                         "problem": problem(response) or (None if response.status_code == 401 or path == "/health"
                                                          else f"{response.status_code} without a key")})
    return rows


def plot(rows: list[dict], path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(11, 0.45 * len(rows) + 1.5))
    labels = [f"{r['operation']} ({r['mode']})" for r in rows]
    codes = sorted({c for r in rows for c in r["statuses"]}, key=int)
    left = [0] * len(rows)
    cmap = plt.get_cmap("tab10")
    for i, code in enumerate(codes):
        counts = [r["statuses"].get(code, 0) for r in rows]
        ax.barh(labels, counts, left=left, color="tab:red" if int(code) >= 500 else cmap(i % 10), label=code)
        left = [a + b for a, b in zip(left, counts)]
    ax.set_xlabel("generated cases by response status")
    ax.legend(title="status", fontsize=8)
    ax.set_title("schemathesis against /openapi.json: responses by status (red would be 5xx)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--stages", default="split", choices=["split", "fused"])
    parser.add_argument("--examples", type=int, default=150, help="cases per operation and mode")
    parser.add_argument("--output", type=Path, default=RESULTS / "serve_fuzz.json")
    args = parser.parse_args()

    import schemathesis
    from ray import serve

    from causal2vec.serve.app import build_app

    config = local_app_args(args.model, args.stages, dtype="fp32", api_keys_env="C2V_FUZZ_KEYS")
    config["ingress"] = {**config["ingress"], "ray_actor_options": {
        **config["ingress"].get("ray_actor_options", {}), "runtime_env": {"env_vars": {"C2V_FUZZ_KEYS": KEY}}}}
    with local_serve() as base:
        serve.run(build_app(config), name="fuzz", route_prefix="/")
        doc = httpx.get(f"{base}/openapi.json", headers={"Authorization": f"Bearer {KEY}"}, timeout=60).json()
        schema = schemathesis.openapi.from_dict(doc)
        print(f"==> {len(doc['paths'])} paths from /openapi.json; {args.examples} cases per operation and mode",
              flush=True)
        rows = fuzz(schema, base, args.examples)
        unauthenticated = without_key(doc, base)
        serve.delete("fuzz")
    problems = [p for r in rows for p in r["problems"]] + [r for r in unauthenticated if r["problem"]]
    result = {"command": command(), "hardware": hardware(), "model": args.model, "stages": args.stages,
              "cases": sum(r["cases"] for r in rows), "server_errors": sum(
                  v for r in rows for k, v in r["statuses"].items() if int(k) >= 500),
              "problems": len(problems), "operations": rows, "without_key": unauthenticated}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=1) + "\n")
    plot(rows, args.output.with_suffix(".png"))
    print(f"\n{result['cases']} cases: {result['server_errors']} server errors, {result['problems']} problems; "
          f"wrote {args.output} and {args.output.with_suffix('.png')}")
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
