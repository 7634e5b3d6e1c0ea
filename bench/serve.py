#!/usr/bin/env python3
"""Load benchmark and client-compatibility check for `ferrolm serve`.

Starts the server on a loopback port (its own process), then with the official `openai`
Python client (unchanged, pointed at the server with base_url):
  1. compatibility: models.list, chat (plain and streamed), completions, embeddings;
  2. load: 1, 8 and 32 concurrent streaming chat clients, each sending requests back to
     back: aggregate output tokens/s, time to first token p50/p99, inter-token latency
     p50/p99 (gaps between streamed chunks), errors, the server's peak RSS;
  3. overload: more clients than slots + queue; every request must end as a complete
     answer (finish_reason stop/length, usage matching) or a clean 429;
  4. feedback under load: judgements posted by concurrent clients while chats stream;
     after a graceful stop every one must be in `ferrolm feedback export`'s output.

Install the client outside the repository:
  python3 -m venv /work/venv-serve && /work/venv-serve/bin/pip install openai
Run:
  /work/venv-serve/bin/python bench/serve.py --bin target/release/ferrolm --model RUN_DIR
Only loopback traffic; every phase is bounded in request count.
"""
import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import openai


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(xs, p):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    k = min(len(xs) - 1, max(0, round(p / 100 * (len(xs) - 1))))
    return xs[k]


def peak_rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class Server:
    def __init__(self, binary, model, extra):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}/v1"
        self.proc = subprocess.Popen([binary, "serve", "--model", model, "--port", str(self.port), "--model-name", "bench", *extra],
                                     stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
        t0 = time.time()
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    break
            except OSError:
                if self.proc.poll() is not None:
                    sys.exit("server exited: " + self.proc.stderr.read())
                if time.time() - t0 > 120:
                    sys.exit("server did not start")
                time.sleep(0.1)

    def stop(self):
        rss = peak_rss_mib(self.proc.pid)
        self.proc.terminate()  # SIGTERM: graceful shutdown
        self.proc.wait(timeout=60)
        return rss


PROMPTS = ["Write a Rust function that adds two numbers.", "What does a tokenizer do?", "Explain the borrow checker.",
           "How do I read a file line by line?", "Tell me about iterators.", "What is a trait object?"]


def compat(base):
    c = openai.OpenAI(base_url=base, api_key="unused", max_retries=0)
    out = {}
    out["models.list"] = [m.id for m in c.models.list().data]
    r = c.chat.completions.create(model="bench", messages=[{"role": "user", "content": "Hello!"}], max_tokens=16, seed=1)
    out["chat"] = (r.choices[0].finish_reason, r.usage.completion_tokens)
    chunks = list(c.chat.completions.create(model="bench", messages=[{"role": "user", "content": "Hello!"}], max_tokens=16, seed=1,
                                            stream=True, stream_options={"include_usage": True}))
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    out["chat stream"] = (len(chunks), text == r.choices[0].message.content, chunks[-1].usage.completion_tokens)
    r = c.completions.create(model="bench", prompt="fn main() {", max_tokens=8, echo=True, logprobs=2)
    out["completions"] = (r.choices[0].text.startswith("fn main() {"), len(r.choices[0].logprobs.tokens))
    try:
        c.embeddings.create(model="bench", input="hi")
        out["embeddings"] = "served"
    except openai.BadRequestError as e:
        out["embeddings"] = f"400 (not supported by a decoder): {e.body.get('message', '')[:60]}" if isinstance(e.body, dict) else "400"
    try:
        c.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
        out["unknown model"] = "accepted?!"
    except openai.NotFoundError:
        out["unknown model"] = "404"
    return out


def request_body(i, max_tokens, model):
    """Request i of the load: a prompt in turn, sampled at temperature 0.8 with seed i."""
    return {"model": model, "messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}], "max_tokens": max_tokens,
            "temperature": 0.8, "seed": i, "stream": True, "stream_options": {"include_usage": True}}


async def openai_chunks(client, body):
    """(has content, finish_reason, completion tokens from usage) of each streamed chunk."""
    async for ch in await client.chat.completions.create(**body):
        choice = ch.choices[0] if ch.choices else None
        yield (bool(choice and choice.delta.content), choice.finish_reason if choice else None,
               ch.usage.completion_tokens if ch.usage else None)


async def one_stream(chunks, rec):
    """Time one streamed answer: time to first token, gaps between content chunks, tokens."""
    t0 = time.perf_counter()
    first = last = tokens = finish = None
    gaps = []
    pieces = 0
    async for has_content, fin, usage_tokens in chunks:
        now = time.perf_counter()
        if has_content:
            pieces += 1
            if first is None:
                first = now - t0
            elif last is not None:
                gaps.append(now - last)
            last = now
        finish = fin or finish
        tokens = usage_tokens if usage_tokens is not None else tokens
    rec["ttft"].append(first if first is not None else time.perf_counter() - t0)
    rec["itl"].extend(gaps)
    # a server that sends no usage in streams (llama-cpp-python): one chunk per token
    tokens = tokens if tokens is not None else pieces
    rec["tokens"] += tokens
    rec["done"] += 1
    assert finish in ("stop", "length"), finish
    return tokens


class RawClient:
    """One keep-alive HTTP/1.1 connection per worker, server-sent events read from the
    chunked body with nothing but json.loads per event.

    Why: on a 2-core machine the official client's per-chunk work (httpx, pydantic models)
    took as much CPU as the server's model thread under 8 streaming clients (perf: python
    46 % of the samples, ferrolm's scheduler 45 %), so the client, not the server, set the
    8-client figure. The same requests and the same measurements, a tenth of the CPU."""

    def __init__(self, base):
        host_port = base.split("//", 1)[1].split("/", 1)[0]
        self.host, port = host_port.rsplit(":", 1)
        self.port = int(port)
        self.path = "/" + base.split("//", 1)[1].split("/", 1)[1].rstrip("/") + "/chat/completions"
        self.conn = None

    async def events(self, body):
        """The `data:` payloads of one streamed request, as they arrive."""
        if self.conn is None:
            self.conn = await asyncio.open_connection(self.host, self.port)
        reader, writer = self.conn
        payload = json.dumps(body).encode()
        writer.write(f"POST {self.path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
                     f"Authorization: Bearer unused\r\nContent-Length: {len(payload)}\r\n\r\n".encode() + payload)
        await writer.drain()
        status = await reader.readline()
        if not status:
            raise ConnectionError("server closed the connection")
        headers = {}
        while (line := await reader.readline()) not in (b"\r\n", b""):
            k, _, v = line.decode().partition(":")
            headers[k.strip().lower()] = v.strip()
        if b" 200 " not in status:
            n = int(headers.get("content-length", "0"))
            raise RuntimeError(f"{status.decode().strip()}: {(await reader.readexactly(n))[:200]!r}")
        if headers.get("transfer-encoding") != "chunked":
            raise RuntimeError(f"expected a chunked event stream, got headers {headers}")
        buf = b""
        while True:
            size = int((await reader.readline()).strip(), 16)
            data = await reader.readexactly(size + 2)
            if size == 0:
                return
            buf += data[:-2]
            while b"\n\n" in buf:
                event, buf = buf.split(b"\n\n", 1)
                for line in event.split(b"\n"):
                    if line.startswith(b"data: "):
                        yield line[6:]

    async def close(self):
        if self.conn:
            self.conn[1].close()


async def raw_chunks(client, body):
    """As `openai_chunks`, from the raw event stream."""
    async for data in client.events(body):
        if data == b"[DONE]":
            continue  # read on to the end of the chunked body: the connection is reused
        ch = json.loads(data)
        choices = ch.get("choices") or []
        choice = choices[0] if choices else {}
        usage = ch.get("usage")
        yield (bool(choice.get("delta", {}).get("content")), choice.get("finish_reason"), usage["completion_tokens"] if usage else None)


async def load(base, clients, per_client, max_tokens, model="bench", client_kind="openai", until=None):
    rec = {"ttft": [], "itl": [], "tokens": 0, "errors": 0, "done": 0}
    shared = openai.AsyncOpenAI(base_url=base, api_key="unused", max_retries=0, timeout=600) if client_kind == "openai" else None

    async def worker(w):
        client = shared or RawClient(base)
        chunks = openai_chunks if shared else raw_chunks
        for k in range(per_client):
            if until is not None and until.is_set():
                break
            try:
                await one_stream(chunks(client, request_body(w * 1000 + k, max_tokens, model)), rec)
            except Exception as e:  # noqa: BLE001 - counted, reported
                rec["errors"] += 1
                print("error:", type(e).__name__, e, file=sys.stderr)
                if not shared:
                    await client.close()
                    client = RawClient(base)
        if not shared:
            await client.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(clients)))
    wall = time.perf_counter() - t0
    if shared:
        await shared.close()
    return {"clients": clients, "requests": rec["done"] + rec["errors"], "tokens": rec["tokens"], "tok_s": rec["tokens"] / wall, "ttft_p50": pct(rec["ttft"], 50),
            "ttft_p99": pct(rec["ttft"], 99), "itl_p50": pct(rec["itl"], 50), "itl_p99": pct(rec["itl"], 99), "errors": rec["errors"], "wall": wall,
            "tokens_per_request": rec["tokens"] / max(1, rec["done"])}


async def overload(base, clients, max_tokens):
    client = openai.AsyncOpenAI(base_url=base, api_key="unused", max_retries=0, timeout=600)
    res = {"complete": 0, "429": 0, "other": 0}

    async def one(i):
        try:
            r = await client.chat.completions.create(model="bench", messages=[{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
                                                     max_tokens=max_tokens, seed=i)
            ok = r.choices[0].finish_reason in ("stop", "length") and r.usage.completion_tokens >= 1 and \
                (r.choices[0].finish_reason != "length" or r.usage.completion_tokens == max_tokens)
            res["complete" if ok else "other"] += 1
        except openai.RateLimitError as e:
            res["429" if e.response.headers.get("retry-after") else "other"] += 1
        except Exception as e:  # noqa: BLE001
            res["other"] += 1
            print("overload error:", type(e).__name__, e, file=sys.stderr)

    await asyncio.gather(*(one(i) for i in range(clients)))
    await client.close()
    return res


async def feedback_under_load(base, stream_clients, judges, per_judge, max_tokens):
    """Judgements posted to /v1/feedback by `judges` concurrent clients while
    `stream_clients` streaming chats run: every judgement must be stored (200 with an id),
    with its latency; the caller then checks the export holds each of them."""
    root = base.rsplit("/v1", 1)[0]
    host, port = root.split("//", 1)[1].rsplit(":", 1)
    lat, errors, ids = [], [], set()
    stop = asyncio.Event()

    async def judge(w):
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            for k in range(per_judge):
                j = {"kind": "compare", "prompt": f"judge {w} question {k}: which answer is better?", "answer_a": f"answer a {w}/{k}",
                     "answer_b": f"answer b {w}/{k} " + "x" * (k % 7), "choice": "a" if (w + k) % 2 else "b",
                     "history": [{"role": "user", "content": f"earlier turn {w}"}, {"role": "assistant", "content": "earlier answer"}],
                     "settings": {"temperature": 0.8, "seed": k}}
                body = json.dumps(j).encode()
                t0 = time.perf_counter()
                writer.write(f"POST /v1/feedback HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                             f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
                await writer.drain()
                status = await reader.readline()
                headers = {}
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    key, _, v = line.decode().partition(":")
                    headers[key.strip().lower()] = v.strip()
                answer = await reader.readexactly(int(headers.get("content-length", "0")))
                lat.append(time.perf_counter() - t0)
                if b" 200 " in status and json.loads(answer).get("stored"):
                    ids.add(json.loads(answer)["id"])
                else:
                    errors.append(f"{status.decode().strip()} {answer[:120]!r}")
        finally:
            writer.close()

    async def chats():
        r = await load(base, stream_clients, 10_000, max_tokens, client_kind="raw", until=stop)
        return r

    chat_task = asyncio.create_task(chats())
    t0 = time.perf_counter()
    await asyncio.gather(*(judge(w) for w in range(judges)))
    wall = time.perf_counter() - t0
    stop.set()
    streamed = await chat_task
    return {"judgements": judges * per_judge, "stored": len(ids), "errors": errors, "per_s": judges * per_judge / wall,
            "lat_p50": pct(lat, 50), "lat_p99": pct(lat, 99), "chat_tokens": streamed["tokens"], "chat_errors": streamed["errors"]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="target/release/ferrolm")
    ap.add_argument("--model", required=True)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--per-client", type=int, default=0, help="requests per client (default: enough for ≥ 8 requests per level)")
    ap.add_argument("--levels", default="1,8,32")
    ap.add_argument("--client", choices=["openai", "raw"], default="openai",
                    help="load client: the official openai client, or a raw HTTP/1.1 event-stream reader that needs a tenth of "
                         "its CPU (on 2 cores the official client competes with the server for the CPU)")
    a = ap.parse_args()

    srv = Server(a.bin, a.model, ["--max-concurrency", "32", "--max-queue", "256"])
    try:
        print("compatibility (official openai client):")
        for k, v in compat(srv.base).items():
            print(f"  {k}: {v}")
        rows = []
        for c in [int(x) for x in a.levels.split(",")]:
            per = a.per_client or max(1, 8 // c) * 2
            r = asyncio.run(load(srv.base, c, per, a.max_tokens, client_kind=a.client))
            rows.append(r)
            print(f"  {c:>3} clients: {r['requests']} requests, {r['tok_s']:.1f} tok/s, TTFT p50 {r['ttft_p50']*1e3:.0f} ms "
                  f"p99 {r['ttft_p99']*1e3:.0f} ms, ITL p50 {r['itl_p50']*1e3:.1f} ms p99 {r['itl_p99']*1e3:.1f} ms, errors {r['errors']}", flush=True)
    finally:
        rss = srv.stop()
    print(f"  peak RSS of the server: {rss:.0f} MiB")
    print("| clients | requests | output tok/s | TTFT p50 | TTFT p99 | ITL p50 | ITL p99 | errors |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['clients']} | {r['requests']} | {r['tok_s']:.1f} | {r['ttft_p50']*1e3:.0f} ms | {r['ttft_p99']*1e3:.0f} ms | "
              f"{r['itl_p50']*1e3:.1f} ms | {r['itl_p99']*1e3:.1f} ms | {r['errors']} |")

    # overload: 4 slots + 8 queued, 48 simultaneous clients
    srv = Server(a.bin, a.model, ["--max-concurrency", "4", "--max-queue", "8"])
    try:
        res = asyncio.run(overload(srv.base, 48, a.max_tokens))
    finally:
        rss = srv.stop()
    print(f"overload (4 slots, queue 8, 48 clients): {res['complete']} complete, {res['429']} clean 429, {res['other']} other; peak RSS {rss:.0f} MiB")
    if res["other"]:
        sys.exit("overload produced requests that were neither complete nor a clean 429")

    # feedback under load: 8 judges post 25 comparisons each while 8 chats stream; after a
    # graceful stop every judgement must be in `ferrolm feedback export`'s preferences
    with tempfile.TemporaryDirectory(prefix="serve_feedback_") as tmp:
        db = os.path.join(tmp, "feedback.db")
        srv = Server(a.bin, a.model, ["--max-concurrency", "8", "--feedback-db", db])
        try:
            fb = asyncio.run(feedback_under_load(srv.base, 8, 8, 25, a.max_tokens))
        finally:
            rss = srv.stop()
        prefs = os.path.join(tmp, "prefs.jsonl")
        subprocess.run([a.bin, "feedback", "export", "--db", db, "--out", prefs], check=True, capture_output=True)
        with open(prefs) as f:
            exported = [json.loads(line) for line in f]
        right = sum(1 for p in exported if p["chosen"].startswith("answer a" if p["rejected"].startswith("answer b") else "answer b"))
        print(f"feedback under load (8 judges x 25 comparisons beside 8 streaming chats): {fb['stored']}/{fb['judgements']} stored, "
              f"{fb['per_s']:.0f} judgements/s, latency p50 {fb['lat_p50']*1e3:.1f} ms p99 {fb['lat_p99']*1e3:.1f} ms, "
              f"{len(exported)} preferences exported ({right} with the picked answer as chosen), chats meanwhile {fb['chat_tokens']} tokens, "
              f"{fb['chat_errors']} chat errors, {len(fb['errors'])} judgement errors; peak RSS {rss:.0f} MiB")
        if fb["errors"] or fb["stored"] != fb["judgements"] or len(exported) != fb["judgements"] or right != len(exported) or fb["chat_errors"]:
            sys.exit(f"feedback under load lost or garbled judgements: {fb['errors'][:3]}")


if __name__ == "__main__":
    main()
