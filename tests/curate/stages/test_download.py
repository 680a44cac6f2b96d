"""Download: real HTTP on loopback, every faulty route ends stored or as a reject with its reason."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from curate.fetch import Fetcher, resize_image, sniff
from curate.recipe import load_recipe
from curate.runner import Runner
from tests.http_faults import FaultServer, closed_port, jpeg_bytes

# the fault server is on loopback, which the download stage refuses unless the recipe opts in
FAST = dict(connect_timeout=0.5, read_timeout=0.3, total_timeout=3.0, retries=2, backoff=0.01, max_bytes=2_000_000,
            allow_private=True)
RECIPE = Path(__file__).resolve().parents[3] / "recipes" / "sft-stage3.yaml"


@pytest.fixture(scope="module")
def server():
    with FaultServer() as s:
        yield s


@pytest.mark.parametrize("path,reason", [
    ("/404", "http_404"), ("/always500", "http_error"), ("/slow", "timeout"), ("/big", "too_large"),
    ("/loop", "redirect_loop"), ("/tofile", "bad_redirect_scheme"), ("/notmedia", "not_media"),
    ("/truncated", "truncated"), ("/reset", "connection_error"),
])
def test_faulty_routes_end_with_their_reason(server, path, reason):
    t0 = time.monotonic()
    result = Fetcher(**FAST).fetch(server.url(path))
    assert not result.ok and result.reason == reason, (result.reason, result.error)
    assert time.monotonic() - t0 < 10, "bounded: never hangs"


@pytest.mark.parametrize("path", ["/drip", "/slowheaders", "/endless"])
def test_the_deadline_holds_while_bytes_keep_coming(server, path):
    """A read timeout never fires while a server drips; the per-attempt deadline must, and such a
    server is not asked again (it would only hold a worker slot for another deadline)."""
    t0 = time.monotonic()
    result = Fetcher(**(FAST | {"total_timeout": 1.5})).fetch(server.url(path))
    elapsed = time.monotonic() - t0
    assert not result.ok and result.reason == "timeout" and "total_timeout_s" in result.error, result.error
    assert result.attempts == 1 and elapsed < 1.5 + 1.0, elapsed


def test_a_stalled_url_delays_its_batch_by_its_deadline_only(server):
    from concurrent.futures import ThreadPoolExecutor

    f = Fetcher(**(FAST | {"total_timeout": 1.5}))
    urls = [server.url(p) for p in ("/drip", "/img/0.jpg", "/slowheaders", "/img/1.jpg")]
    t0 = time.monotonic()
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(f.fetch, urls))
    assert [r.ok for r in results] == [False, True, False, True]
    assert time.monotonic() - t0 < 1.5 + 1.0


def test_retryable_errors_are_retried_and_others_are_not(server):
    f = Fetcher(**FAST)
    flaky = f.fetch(server.url("/flaky"))
    assert flaky.ok and flaky.attempts == 2 and flaky.kind == "image"
    before = server.hits.get("/404", 0)
    assert f.fetch(server.url("/404")).attempts == 1 and server.hits["/404"] == before + 1
    assert f.fetch(server.url("/always500")).attempts == 3  # retries=2 -> three attempts


def test_content_type_is_sniffed_not_trusted(server):
    f = Fetcher(**FAST)
    r = f.fetch(server.url("/wrongtype.jpg"))  # served as text/html
    assert r.ok and r.mime == "image/jpeg" and r.data == server.images["0.jpg"]
    r = f.fetch(server.url("/redirect"))
    assert r.ok and r.final_url.endswith("/img/1.jpg") and r.data == server.images["1.jpg"]
    assert sniff(b"RIFF\0\0\0\0WAVEfmt ")[0] == "audio" and sniff(b"\0\0\0\x18ftypmp42")[0] == "video"


def test_unreachable_host_and_host_lists(server):
    t0 = time.monotonic()
    r = Fetcher(**FAST).fetch(f"http://127.0.0.1:{closed_port()}/x.jpg")
    assert r.reason == "connection_error" and r.attempts == 3 and time.monotonic() - t0 < 5
    assert Fetcher(**FAST, deny_hosts=["127.0.0.1"]).fetch(server.url("/img/0.jpg")).reason == "host_denied"
    assert Fetcher(**FAST, allow_hosts=["example.org"]).fetch(server.url("/img/0.jpg")).reason == "host_denied"
    assert Fetcher(**FAST).fetch("ftp://127.0.0.1/x.jpg").reason == "bad_scheme"


def test_resize_only_when_larger():
    big = jpeg_bytes(1, (2400, 1600))
    out, mime, ext = resize_image(big, 512, 90)
    from io import BytesIO

    from PIL import Image

    assert max(Image.open(BytesIO(out)).size) == 512 and mime == "image/jpeg"
    assert resize_image(jpeg_bytes(1, (300, 200)), 512, 90) is None  # nothing changes: bytes kept


@pytest.mark.pipeline
def test_run_fetches_stores_rejects_and_resumes(ray_session, demo_small, server, tmp_path):
    routes = ["/img/0.jpg", "/img/1.jpg", "/img/2.jpg", "/wrongtype.jpg", "/404", "/loop", "/tofile", "/notmedia",
              "/big", f"http://127.0.0.1:{closed_port()}/gone.jpg"]
    manifest = tmp_path / "urls.jsonl"
    lines = [{"id": f"u{i}", "image": r if r.startswith("http") else server.url(r),
              "conversations": [{"from": "human", "value": "<image>\nWhat is shown?"},
                                {"from": "gpt", "value": f"A yellow box, number {i}."}]} for i, r in enumerate(routes)]
    manifest.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    sets = [f"stages.tokenize.tokenizer={demo_small}/tokenizer", "stages.download.enabled=true",
            "stages.download.connect_timeout_s=0.5", "stages.download.read_timeout_s=0.5",
            "stages.download.retries=1", "stages.download.backoff_s=0.01", "stages.download.max_bytes=2000000",
            "stages.download.allow_private=true",
            "modality_targets={}"] + [f"stages.{k}.enabled=false" for k in ("filter", "dedupe", "score", "transcribe",
                                                                            "audio_qa")]
    recipe = load_recipe(RECIPE, sets, inputs=[str(manifest)])
    out = tmp_path / "run"
    stats = Runner(recipe, out).run()
    assert stats["invariant_ok"]
    d = stats["download"]
    assert d["urls"] == 10 and d["fetched"] == 4
    assert d["failures"] == {"http_404": 1, "redirect_loop": 1, "bad_redirect_scheme": 1, "not_media": 1,
                             "too_large": 1, "connection_error": 1}
    assert stats["samples_out"] == 4 and stats["rejected"]["http_404"] == 1
    import pyarrow.parquet as pq

    rejects = {r["line"]: r for r in pq.read_table(out / "rejects" / "download.parquet").to_pylist()}
    assert rejects[7]["reject_reason"] == "bad_redirect_scheme" and "file://" in rejects[7]["reject_detail"]
    # a re-run whose download stage must run again (its config changed) asks the server for nothing:
    # stored URLs come from the URL index, URLs that failed for good are not retried
    hits = sum(server.hits.values())
    again = load_recipe(RECIPE, sets + ["stages.download.concurrency=4"], inputs=[str(manifest)])
    stats2 = Runner(again, out).run()
    assert sum(server.hits.values()) == hits
    assert stats2["samples_out"] == 4 and stats2["invariant_ok"]
    # --retry-failed asks again for the URLs that failed for good (404, loop, ...), not the stored ones
    retry = load_recipe(RECIPE, sets + ["stages.download.concurrency=4", "stages.download.retry_failed=true"],
                        inputs=[str(manifest)])
    before = dict(server.hits)
    Runner(retry, out).run()
    assert server.hits["/404"] == before["/404"] + 1
    assert server.hits["/img/0.jpg"] == before["/img/0.jpg"]


def test_the_stage_is_skipped_for_an_input_without_urls(tmp_path):
    """Rows with no media URL to fetch pass through on all cores instead of one download task;
    one alive row with a URL, in any file, makes the stage run. A rejected row does not count."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from curate.recipe import DownloadConfig
    from curate.records import CORE_SCHEMA, empty_media
    from curate.stages.download import DownloadStage
    from tests.builders import make_ctx, make_row

    local = empty_media("image", "images/a.jpg") | {"path": "/data/images/a.jpg"}
    remote = empty_media("image", "https://example.org/a.jpg")
    stage = DownloadStage(DownloadConfig(), make_ctx(tmp_path))

    def folder(name: str, *files: list[dict]) -> Path:
        path = tmp_path / name
        path.mkdir()
        for i, rows in enumerate(files):
            pq.write_table(pa.Table.from_pylist(rows, schema=CORE_SCHEMA), path / f"{i}.parquet")
        return path

    text = [make_row(f"t{i}") for i in range(3)]
    stored = [make_row("s", media=[local], modality="image")]
    dead = [make_row("d", media=[remote], modality="image", reject_stage="ingest", reject_reason="bad_record")]
    assert "nothing to fetch" in stage.input_skip_reason(folder("none", text, stored + dead, []))
    assert stage.input_skip_reason(folder("one", text, text + [make_row("u", media=[local, remote])])) is None


# ---------------------------------------------------------------------------- private addresses
OPT_OUT = {k: v for k, v in FAST.items() if k != "allow_private"}  # the defaults: no private address


@pytest.mark.parametrize("address,kind", [
    ("127.0.0.1", "loopback"), ("::1", "loopback"), ("10.1.2.3", "private"), ("192.168.0.7", "private"),
    ("fd12::1", "private"), ("169.254.169.254", "link-local"), ("fe80::1", "link-local"),
    ("224.0.0.251", "multicast"), ("ff02::1", "multicast"), ("0.0.0.0", "unspecified"), ("::", "unspecified"),
    ("240.0.0.1", "reserved"), ("100.100.100.200", "not global"),
    ("::ffff:169.254.169.254", "link-local (IPv4 169.254.169.254 inside IPv6)"),
    ("2002:a00:1::1", "private (IPv4 10.0.0.1 inside IPv6)"),
    ("93.184.215.14", None), ("2606:4700::6810:85e5", None),
])
def test_non_public_addresses_are_named(address, kind):
    from curate.security import AddressPolicy

    assert AddressPolicy().refusal(address) == kind
    assert AddressPolicy(allow_private=True).refusal(address) is None


def test_allow_networks_opens_only_its_blocks():
    from curate.security import AddressPolicy

    policy = AddressPolicy.from_config(allow_networks=["127.0.0.1/32", "fd00::/8"])
    assert policy.refusal("127.0.0.1") is None and policy.refusal("::ffff:127.0.0.1") is None
    assert policy.refusal("fd12::1") is None
    assert policy.refusal("127.0.0.2") == "loopback" and policy.refusal("10.0.0.1") == "private"
    from curate.recipe import DownloadConfig

    with pytest.raises(ValueError, match="no CIDR block"):
        DownloadConfig(allow_networks=["10.0.0.0/33"])


def test_a_loopback_url_is_refused_by_default_and_fetched_with_the_opt_in(server):
    before = server.hits.get("/img/2.jpg", 0)
    refused = Fetcher(**OPT_OUT).fetch(server.url("/img/2.jpg"))
    assert refused.reason == "private_address" and refused.attempts == 1
    assert "127.0.0.1 (loopback)" in refused.error and "allow_private" in refused.error
    assert server.hits.get("/img/2.jpg", 0) == before  # refused before connecting: no request
    assert Fetcher(**OPT_OUT, allow_private=True).fetch(server.url("/img/2.jpg")).ok
    assert Fetcher(**OPT_OUT, allow_networks=["127.0.0.0/8"]).fetch(server.url("/img/2.jpg")).ok
    assert server.hits["/img/2.jpg"] == before + 2


def test_a_redirect_to_a_refused_address_is_refused(server):
    """The allow list admits the first server (127.0.0.1), the redirect leads to 127.0.0.2."""
    with FaultServer(host="127.0.0.2") as inner:
        hop = server.url("/goto/" + inner.url("/img/1.jpg"))
        r = Fetcher(**OPT_OUT, allow_networks=["127.0.0.1/32"]).fetch(hop)
        assert r.reason == "private_address" and "127.0.0.2 (loopback)" in r.error
        assert inner.url("/img/1.jpg") in r.error  # the detail names the hop that was refused
        assert inner.hits == {}
        assert Fetcher(**OPT_OUT, allow_networks=["127.0.0.1/32", "127.0.0.2/32"]).fetch(hop).ok
        assert inner.hits == {"/img/1.jpg": 1}


def test_a_name_resolving_to_a_private_address_is_refused(server, monkeypatch):
    import socket

    r = Fetcher(**OPT_OUT).fetch(f"http://localhost:{server.port}/img/0.jpg")
    assert r.reason == "private_address" and "localhost resolves to" in r.error and "loopback" in r.error
    # a public-looking name whose DNS answer is private; the answer changes after the first lookup
    # (DNS rebinding): the connection goes to the address that was checked, looked up once
    real, answers, asked = socket.getaddrinfo, ["127.0.0.1", "127.0.0.2"], []

    def fake(host, *args, **kwargs):
        if host != "media.example.org":
            return real(host, *args, **kwargs)
        asked.append(host)
        return real(answers[min(len(asked), 2) - 1], *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", fake)
    url = f"http://media.example.org:{server.port}/img/0.jpg"
    assert Fetcher(**OPT_OUT).fetch(url).reason == "private_address"
    asked.clear()
    ok = Fetcher(**OPT_OUT, allow_networks=["127.0.0.1/32"]).fetch(url)
    assert ok.ok and len(asked) == 1
    answers.reverse()  # now the first answer is the refused one, the later ones the allowed one
    asked.clear()
    r = Fetcher(**OPT_OUT, allow_networks=["127.0.0.1/32"]).fetch(url)
    assert r.reason == "private_address" and "127.0.0.2" in r.error and len(asked) == 1


def test_the_stage_rejects_private_addresses_and_decides_again_next_run(server, tmp_path):
    from curate.recipe import DownloadConfig
    from curate.records import empty_media
    from curate.stages.download import DownloadStage
    from tests.builders import make_ctx, make_row

    url = server.url("/img/3.jpg")

    def run(**config):
        stage = DownloadStage(DownloadConfig(**config), make_ctx(tmp_path))
        stage.setup()
        return stage.process_rows([make_row("p", media=[empty_media("image", url)], modality="image")])[0]

    row = run()
    assert row["reject_reason"] == "private_address" and "127.0.0.1 (loopback)" in row["reject_detail"]
    row = run(allow_networks=["127.0.0.1/32"])  # the URL index does not keep the refusal
    assert row["reject_reason"] is None and row["media"][0]["path"]
