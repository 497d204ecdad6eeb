"""``orderfleet bench fuzz``: bad input at a real ``orderfleet serve``; nothing may hurt it.

Fires ``--inputs`` requests (signed and unsigned) at the Shopify, WooCommerce and native
endpoints of a real intake process on a database named *bench* (wiped): malformed JSON, wrong
types at random places, missing fields, huge and negative quantities and prices, unknown
currencies, 10 MB bodies, deep nesting, invalid UTF-8, NUL and lone surrogates, NaN and huge
integers, wrong content types, and the same ids with different content. It reports the response
codes, 5xx and connection errors, tracebacks in the server's log, whether the server is still
up, and whether any unsigned request wrote a row (none may).

:func:`fuzz_inputs` and :func:`fire_inputs` are also the suite's short fuzz run
(tests/integration/test_fuzz.py), against an in-process server.
"""

from __future__ import annotations

import asyncio
import copy
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from random import Random
from typing import Any

import httpx
from rich.console import Console

from sandbox.storefront import shopify_headers, woocommerce_headers
from sandbox.synthetic import generate_orders

SHOP = "fuzz-shop"
SHOP_SECRET = "shpss_fuzz_webhook_secret"
WOO_STORE = "fuzz-woo"
WOO_SECRET = "woo_fuzz_webhook_secret"
STORE = "fuzz-native"
STORE_TOKEN = "fuzz-native-store-token"
# Unsigned bodies carry this marker: finding it in the database means one was written.
UNSIGNED_MARK = "fuzz-unsigned-"
HUGE_BODY_BYTES = 10 * 1024 * 1024

KINDS = ("malformed_json", "wrong_type", "missing_field", "huge_or_negative", "unknown_currency",
         "deep_nesting", "invalid_utf8", "nul_surrogate_nan", "duplicate_id", "wrong_type_body",
         "content_type", "huge_body", "valid")
# Relative frequency of each kind (10 MB bodies are rare: each costs the network 10 MB).
WEIGHTS = (12, 20, 14, 10, 6, 5, 5, 6, 8, 5, 3, 0.2, 6)


def fuzz_settings_overrides() -> dict[str, Any]:
    """The secrets and limits the fuzzed service runs with."""
    return {"shopify_secrets": {SHOP: SHOP_SECRET}, "woocommerce_secrets": {WOO_STORE: WOO_SECRET},
            "store_secrets": {STORE: STORE_TOKEN}}


@dataclass
class FuzzInput:
    kind: str
    route: str  # shopify | woocommerce | native
    signed: bool
    body: bytes
    content_type: str = "application/json"
    event_id: str = ""


def _random_value(rng: Random) -> Any:
    return rng.choice([None, True, False, 0, -1, 2 ** 63, 1e308, -1e-9, "", "x" * 300, "💥",
                       "1; DROP TABLE orders", [], [1, "a"], {}, {"a": {"b": None}}, "NaN",
                       "-0.00", "1e400", "0x10", " 12 ", "２３"])


def leaf_paths(obj: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key path into ``obj`` (dicts and lists), parents before children."""
    out = [prefix] if prefix else []
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.extend(leaf_paths(v, (*prefix, k)))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out.extend(leaf_paths(v, (*prefix, i)))
    return out


def _set(obj: Any, path: tuple[Any, ...], value: Any, *, delete: bool = False) -> None:
    """Replace (or delete) what ``path`` leads to; a path an earlier change broke is skipped."""
    try:
        for key in path[:-1]:
            obj = obj[key]
        if delete and isinstance(obj, dict):
            obj.pop(path[-1], None)
        elif delete and isinstance(obj, list):
            obj.pop(path[-1])
        elif isinstance(obj, (dict, list)):
            obj[path[-1]] = value
    except (KeyError, IndexError, TypeError):
        return


def _woo_order(rng: Random, n: int) -> dict[str, Any]:
    qty = rng.randint(1, 3)
    price = f"{rng.randint(100, 9000) / 100:.2f}"
    sub = f"{float(price) * qty:.2f}"
    total = f"{float(sub) + 5:.2f}"
    address = {"first_name": "Ana", "last_name": "Roux", "address_1": "3 rue Neuve",
               "city": "Lyon", "postcode": "69001", "country": "FR",
               "email": "ana@example.com", "phone": "+33 4 00 00 00 00"}
    return {"id": 900000 + n, "status": "processing", "currency": "EUR", "customer_id": 0,
            "date_paid_gmt": "2026-11-27T14:20:41", "date_modified_gmt": "2026-11-27T14:20:41",
            "billing": address, "shipping": address, "shipping_total": "5.00",
            "total_tax": "0.00", "discount_total": "0.00", "total": total,
            "line_items": [{"sku": f"MUG-{n % 7}", "quantity": qty, "price": float(price),
                            "subtotal": sub, "total": sub, "product_id": 40 + n % 7}]}


def fuzz_inputs(n: int, *, seed: int = 7, signed_rate: float = 0.6) -> list[FuzzInput]:
    """``n`` bad (and a few good) requests, reproducible from ``seed``."""
    rng = Random(seed)
    base_shopify = generate_orders(64, seed=seed, store=SHOP, shopify_rate=1.0, invalid_rate=0.0)
    base_native = generate_orders(64, seed=seed + 1, store=STORE, shopify_rate=0.0,
                                  invalid_rate=0.0)
    out: list[FuzzInput] = []
    seen: list[FuzzInput] = []
    for i in range(n):
        kind = rng.choices(KINDS, WEIGHTS)[0]
        route = rng.choice(("shopify", "shopify", "woocommerce", "native"))
        signed = rng.random() < signed_rate
        if route == "shopify":
            order = copy.deepcopy(rng.choice(base_shopify))
            order["id"] = 10_000_000 + i
        elif route == "woocommerce":
            order = _woo_order(rng, i)
        else:
            order = copy.deepcopy(rng.choice(base_native))
            order["order_id"] = f"F-{i}"
        if not signed:
            order["note"] = f"{UNSIGNED_MARK}{i}"
        body: bytes | None = None
        content_type = "application/json"
        event_id = f"fuzz-{seed}-{i}"
        if kind == "malformed_json":
            raw = json.dumps(order).encode()
            body = rng.choice([raw[: rng.randint(0, len(raw) - 1)], raw + b"}", b"{'a': 1}",
                               raw.replace(b'"', b"", 3), b"", b"null", rng.randbytes(64)])
        elif kind == "wrong_type":
            for _ in range(rng.randint(1, 4)):
                paths = leaf_paths(order)
                _set(order, rng.choice(paths), _random_value(rng))
        elif kind == "missing_field":
            for _ in range(rng.randint(1, 6)):
                paths = leaf_paths(order)
                if paths:
                    _set(order, rng.choice(paths), None, delete=True)
        elif kind == "huge_or_negative":
            numbers = [p for p in leaf_paths(order) if isinstance(p[-1], str) and any(
                w in p[-1] for w in ("price", "quantity", "total", "subtotal", "grams"))]
            for p in rng.sample(numbers, min(len(numbers), rng.randint(1, 3))):
                _set(order, p, rng.choice([-1, -99999.99, 10 ** 12, 10 ** 40, "9" * 60,
                                           "-0.01", 1e300, 2 ** 31, 0]))
        elif kind == "unknown_currency":
            key = "currency"
            order[key] = rng.choice(["XXX", "ZZZ", "usd ", "€", "", "BTC", 840])
        elif kind == "deep_nesting":
            depth = rng.choice([40, 500, 5000, 100_000])
            body = b'{"id": 1, "x": ' + b"[" * depth + b"]" * depth + b"}"
        elif kind == "invalid_utf8":
            raw = json.dumps(order).encode()
            cut = rng.randint(1, len(raw) - 2)
            body = raw[:cut] + rng.choice([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\x80"]) + \
                raw[cut:]
        elif kind == "nul_surrogate_nan":
            text = json.dumps(order)
            body = text.replace('"', rng.choice(['"\\u0000', '"\\ud800', '"\\udfff\\u0000']),
                                3).encode()
            if rng.random() < 0.3:
                body = b'{"id": 5, "total_price": ' + rng.choice(
                    [b"NaN", b"Infinity", b"-Infinity", b"1" * 5000]) + b"}"
        elif kind == "duplicate_id" and seen:
            prior = rng.choice(seen)
            route, signed = prior.route, prior.signed
            event_id = prior.event_id if rng.random() < 0.5 else event_id
            try:
                order = json.loads(prior.body)
                if isinstance(order, dict):
                    order["note"] = f"changed {i}" if signed else f"{UNSIGNED_MARK}{i}"
                    order["total_price"] = "1.00"
            except ValueError:
                pass
        elif kind == "wrong_type_body":
            body = json.dumps(rng.choice([[order], "order", 42, None, True, [[], {}]])).encode()
        elif kind == "content_type":
            content_type = rng.choice(["text/plain", "application/x-www-form-urlencoded",
                                       "", "application/json; charset=latin-1"])
        elif kind == "huge_body":
            order["note"] = "x" * HUGE_BODY_BYTES
        if body is None:
            body = json.dumps(order).encode()
        item = FuzzInput(kind, route, signed, body, content_type, event_id)
        out.append(item)
        if kind == "valid" or (kind in ("wrong_type", "missing_field") and len(seen) < 200):
            seen.append(item)
    return out


def _request(item: FuzzInput) -> tuple[str, dict[str, str]]:
    if item.route == "shopify":
        secret = SHOP_SECRET if item.signed else "not-the-secret"
        headers = shopify_headers(secret, item.body, "orders/paid", SHOP, event_id=item.event_id)
        path = f"/webhooks/shopify/{SHOP}"
    elif item.route == "woocommerce":
        secret = WOO_SECRET if item.signed else "not-the-secret"
        headers = woocommerce_headers(secret, item.body, "order.created",
                                      delivery_id=item.event_id)
        path = f"/webhooks/woocommerce/{WOO_STORE}"
    else:
        headers = {"Authorization": f"Bearer {STORE_TOKEN if item.signed else 'nope'}",
                   "Idempotency-Key": item.event_id}
        path = "/orders"
    if item.content_type:
        headers["Content-Type"] = item.content_type
    else:
        headers.pop("Content-Type", None)
    return path, headers


@dataclass
class FuzzResult:
    inputs: int = 0
    seconds: float = 0.0
    codes: Counter[str] = field(default_factory=Counter)
    by_kind: dict[str, Counter[str]] = field(default_factory=dict)
    server_errors: int = 0  # 5xx answers
    connection_errors: int = 0  # no answer at all, even on a fresh connection
    retried: int = 0  # requests sent again after a stale keep-alive connection

    def to_json(self) -> dict[str, Any]:
        return {"inputs": self.inputs, "seconds": round(self.seconds, 2),
                "codes": dict(sorted(self.codes.items())), "server_errors": self.server_errors,
                "connection_errors": self.connection_errors, "retried": self.retried,
                "by_kind": {k: dict(sorted(v.items())) for k, v in sorted(self.by_kind.items())}}


async def _fire(base_url: str, inputs: list[FuzzInput], concurrency: int) -> FuzzResult:
    result = FuzzResult(inputs=len(inputs))
    queue = list(reversed(inputs))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base_url, timeout=60, limits=limits) as client:

        async def one_connection() -> None:
            while queue:
                item = queue.pop()
                path, headers = _request(item)
                code = ""
                for attempt in (1, 2):
                    try:
                        answer = await client.post(path, content=item.body, headers=headers)
                        code = str(answer.status_code)
                        break
                    except (httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError) as exc:
                        # A pooled keep-alive connection the server had closed (idle timeout,
                        # or after refusing a 10 MB body): once more on a fresh connection
                        # tells a stale connection from a server that stopped answering.
                        code = f"error {type(exc).__name__}"
                        if attempt == 1:
                            result.retried += 1
                    except httpx.HTTPError as exc:
                        code = f"error {type(exc).__name__}"
                        break
                if code.startswith("error") and item.kind == "huge_body":
                    code = "closed"  # a 413 may close the connection before the body is sent
                result.codes[code] += 1
                result.by_kind.setdefault(item.kind, Counter())[code] += 1
                if code.startswith("5"):
                    result.server_errors += 1
                elif code.startswith("error"):
                    result.connection_errors += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(one_connection() for _ in range(concurrency)))
        result.seconds = time.perf_counter() - t0
    return result


def fire_inputs(base_url: str, inputs: list[FuzzInput], *, concurrency: int = 16) -> FuzzResult:
    """Send every input; count the answers (a 5xx or no answer is a failure)."""
    return asyncio.run(_fire(base_url, inputs, concurrency))


def unsigned_rows_written(settings: Any) -> int:
    """Rows anywhere at the door that carry an unsigned body's marker (must be 0)."""
    from sqlalchemy import String, cast, func, or_, select

    from domain.db import unit_of_work
    from domain.models import OrderRow, RejectedOrder

    like = f"%{UNSIGNED_MARK}%"
    with unit_of_work(settings) as uow:
        rejected = uow.session.execute(select(func.count()).select_from(RejectedOrder).where(
            RejectedOrder.raw.like(like))).scalar_one()
        orders = uow.session.execute(select(func.count()).select_from(OrderRow).where(
            or_(cast(OrderRow.payload, String).like(like)))).scalar_one()
    return int(rejected + orders)


def run_fuzz_bench(*, n_inputs: int, concurrency: int, quiet: bool,
                   database_url: str | None = None, seed: int = 7) -> dict[str, Any]:
    """Fuzz a real ``orderfleet serve`` process (no workers: the door alone)."""
    from config.settings import Settings
    from workers.fleet import (
        BENCH_REDIS_DB,
        Fleet,
        free_port,
        reset_run_database,
        run_settings,
        use_settings,
    )

    console = Console(stderr=True, quiet=quiet)
    url = database_url or f"sqlite:///{Settings().var_dir / 'bench-fuzz.db'}"
    settings = run_settings("bench", BENCH_REDIS_DB, url, api_port=free_port(),
                            **fuzz_settings_overrides())
    settings = use_settings(settings)
    reset_run_database(settings, "bench")
    console.print(f"building {n_inputs} inputs (seed {seed})")
    inputs = fuzz_inputs(n_inputs, seed=seed)
    fleet = Fleet(settings, workers=0, beat=False, carrier=False, api=True, owner="bench")
    log_path = (fleet.log_dir or settings.var_dir / "logs") / "api.log"
    log_start = log_path.stat().st_size if log_path.exists() else 0
    with fleet:
        base = f"http://127.0.0.1:{settings.api_port}"
        result = fire_inputs(base, inputs, concurrency=concurrency)
        alive = fleet.alive().get("api", False)
        try:
            healthy = httpx.get(f"{base}/healthz", timeout=5).is_success
        except httpx.HTTPError:
            healthy = False
    with log_path.open("rb") as log_file:
        log_file.seek(log_start)
        tracebacks = log_file.read().count(b"Traceback")
    out = {**result.to_json(), "signed": sum(1 for i in inputs if i.signed),
           "unsigned": sum(1 for i in inputs if not i.signed),
           "server_alive_after": alive and healthy, "tracebacks_in_server_log": tracebacks,
           "unsigned_rows_written": unsigned_rows_written(settings),
           "database": settings.database_url.split("@")[-1], "seed": seed,
           "concurrency": concurrency}
    console.print(f"[bold]{out['inputs']} inputs ({out['signed']} signed, {out['unsigned']} "
                  f"unsigned) in {out['seconds']} s: codes {out['codes']}; 5xx "
                  f"{out['server_errors']}, connection errors {out['connection_errors']}, "
                  f"tracebacks {tracebacks}, server alive after: {out['server_alive_after']}, "
                  f"unsigned rows written: {out['unsigned_rows_written']}[/bold]")
    return out
