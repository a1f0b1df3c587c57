"""``tracker studio`` in real Chromium (Playwright) against a real server process: grids chosen in the page,
the four compare modes, rating 20 images and 10 pairs with the keyboard, live images from a CLI sweep, and
the guards (token, origin, host, escaping)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from conftest import REPO, run_tracker, wait_in_page

pytestmark = pytest.mark.slow

XSS = "<script>window.pwned=1</script><img src=x onerror=window.pwned=2>"
EXP = """
name: studio
model: shapes
prompt: "a {{ colour }} {{ shape }} on white{{ note }}"
axes:
  colour: [red, green, blue]
  shape: [circle, square]
  note: {plain: "", odd: " %s"}
seeds: [0, 1]
scheduler: DPMSolverMultistep
steps: 4
""" % XSS.replace('"', '\\"')


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    home = tmp_path_factory.mktemp("studio")
    f = home / "studio.yaml"
    f.write_text(EXP)
    res = run_tracker("--home", home / "ws", "run", f, "-q", "--no-mlflow", cwd=REPO)
    assert res.code == 0, res.err
    proc = subprocess.Popen([sys.executable, "-m", "tracker", "--home", str(home / "ws"), "studio", "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO,
                            start_new_session=True)
    url = None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and url is None:
        line = proc.stdout.readline()
        m = re.search(r"(http://127\.0\.0\.1:\d+)/\?token=(\S+)", line or "")
        if m:
            url = m
        elif not line and proc.poll() is not None:
            break
    assert url, "tracker studio printed no URL"
    base, token = url.group(1), url.group(2)
    yield {"base": base, "token": token, "home": home / "ws", "file": f, "proc": proc}
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=30)



@pytest.fixture
def page(browser, server):
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
    pg = ctx.new_page()
    pg.errors, pg.dialogs = [], []
    pg.on("pageerror", lambda e: pg.errors.append(str(e)))
    pg.on("dialog", lambda d: (pg.dialogs.append(d.message), d.dismiss()))
    pg.goto(f"{server['base']}/?token={server['token']}")
    pg.evaluate("localStorage.setItem('tracker-rater', 'tester')")
    yield pg
    assert pg.evaluate("window.pwned") is None and not pg.dialogs
    ctx.close()


def store(server):
    from tracker.store.runstore import Store

    return Store.open(f"sqlite:///{server['home'] / 'tracker.db'}", create=False)


def shown(pg) -> list[str]:
    return pg.eval_on_selector_all("figure.thumb", "els => els.map(e => e.dataset.key)")


def test_rows_columns_and_filters_chosen_in_the_page_show_the_right_images(page, server):
    page.goto(f"{server['base']}/e/studio")
    with page.expect_navigation():
        page.select_option("select[name=rows]", "shape")
    with page.expect_navigation():
        page.select_option("select[name=cols]", "colour")
    with page.expect_navigation():
        page.select_option("select[name='f.note']", "plain")
    with page.expect_navigation():
        page.select_option("select[name='f.seed']", "1")
    with store(server) as s:
        runs = s.runs("studio")
    want = {r.key for r in runs if r.axes["note"] == "plain" and r.seed == 1}
    assert set(shown(page)) == want and len(want) == 6
    headers = page.eval_on_selector_all("th.col", "els => els.map(e => e.textContent)")
    assert headers == ["red", "green", "blue"]
    # the cell at (square, green) holds exactly that run
    by = {(r.axes["shape"], r.axes["colour"]): r.key for r in runs if r.key in want}
    cell = page.locator("#grid tbody tr").nth(1).locator("td").nth(1)
    assert cell.locator("figure.thumb").get_attribute("data-key") == by[("square", "green")]
    # every image loaded (served by key), the XSS prompt shown as text only
    page.goto(f"{server['base']}/e/studio?f.note=odd")
    assert page.evaluate("[...document.images].every(i => i.complete && i.naturalWidth > 0)")
    assert XSS in page.locator("figure.thumb").first.get_attribute("title")


def test_compare_two_images_in_each_mode(page, server):
    with store(server) as s:
        runs = s.runs("studio")
    a = next(r for r in runs if r.axes.items() >= {"colour": "red", "shape": "circle", "note": "plain"}.items() and r.seed == 0)
    b = next(r for r in runs if r.axes.items() >= {"colour": "blue", "shape": "circle", "note": "plain"}.items() and r.seed == 0)
    page.goto(f"{server['base']}/e/studio?f.note=plain&f.shape=circle")
    page.click(f"figure[data-key='{a.key}'] img")
    page.click(f"figure[data-key='{b.key}'] img")
    page.click("#compare-link")
    page.wait_for_load_state()
    assert page.evaluate("document.body.dataset.mode") == "side"
    for mode in ("side", "slider", "fade", "diff"):
        page.click(f"nav.modes a:text-is('{mode}')")
        page.wait_for_load_state()
        assert page.evaluate("document.body.dataset.mode") == mode
        assert page.evaluate("[...document.querySelectorAll('#stage img')].every(i => i.complete && i.naturalWidth > 0)")
        if mode == "slider":
            page.fill("#blend", "20")
            assert page.evaluate("document.getElementById('img-a').style.clipPath") == "inset(0px 80% 0px 0px)"
        if mode == "fade":
            page.fill("#blend", "75")
            assert float(page.evaluate("document.getElementById('img-a').style.opacity")) == pytest.approx(0.25)
        if mode == "diff":
            # red vs blue circles: the difference image is not black
            dark = page.evaluate("""() => { const i = document.getElementById('img-diff'); const c = document.createElement('canvas');
                c.width = i.naturalWidth; c.height = i.naturalHeight; const x = c.getContext('2d'); x.drawImage(i, 0, 0);
                const d = x.getImageData(0, 0, c.width, c.height).data; let m = 0; for (const v of d) m = Math.max(m, v); return m; }""")
            assert dark > 0
    # across experiments works too (the same run as baseline against itself here) and shows no pair buttons
    page.goto(f"{server['base']}/compare?a=studio/{a.key}&b=studio/{a.key}&mode=side")
    assert page.locator("button.judge").count() == 0


def test_rate_twenty_images_and_ten_pairs_with_the_keyboard(page, server, cli):
    page.goto(f"{server['base']}/e/studio")
    page.locator("figure.thumb").first.focus()
    keys = []
    for i in range(20):
        fig = page.evaluate("document.activeElement.dataset.key")
        keys.append(fig)
        page.keyboard.press(str(1 + i % 5))
        wait_in_page(page, "k => document.querySelector(`figure[data-key='${k}']`).dataset.rated", fig)
    assert len(set(keys)) == 20
    page.goto(f"{server['base']}/pairs/studio?axis=colour")
    for i in range(10):
        before = page.evaluate("document.body.dataset.aKey + document.body.dataset.bKey")
        with page.expect_navigation():
            page.keyboard.press("a" if i % 3 else "b")
        assert page.evaluate("document.body.dataset.aKey + document.body.dataset.bKey") != before or i == 9
    from tracker.metrics import ratings

    with store(server) as s:
        rows = ratings.list_ratings(s, "studio")
    scores = [r for r in rows if r.kind == "score"]
    pairs = [r for r in rows if r.kind == "pair"]
    assert len(scores) == 20 and {r.key for r in scores} == set(keys) and {r.rater for r in rows} == {"tester"}
    assert [r.value for r in scores] == [1 + i % 5 for i in range(20)]
    assert len(pairs) == 10
    res = cli("--home", server["home"], "ratings", "studio", "--json")
    assert len([r for r in __import__("json").loads(res.out)["ratings"] if r["kind"] == "pair"]) == 10
    res = cli("--home", server["home"], "effects", "studio", "--metric", "rating")
    assert res.code == 0 and "colour" in res.out, res.err
    # the pairs page now shows the judgements counted
    page.goto(f"{server['base']}/pairs/studio?axis=colour")
    assert "(10 judgements)" in page.locator("h2").first.text_content()


def test_a_sweep_started_from_the_cli_shows_its_images_live(page, server):
    page.goto(f"{server['base']}/e/studio")
    wait_in_page(page, "() => document.body.dataset.live === 'on'")
    f = server["file"]
    f.write_text(EXP.replace("seeds: [0, 1]", "seeds: [0, 1, 2]"))
    res = run_tracker("--home", server["home"], "run", f, "-q", "--no-mlflow", cwd=REPO)
    assert res.code == 0, res.err
    wait_in_page(page, "() => document.querySelectorAll('#live-strip img').length === 12", timeout_ms=30_000)
    with store(server) as s:
        new = {r.key for r in s.runs("studio") if r.seed == 2}
    assert set(page.eval_on_selector_all("#live-strip img", "els => els.map(e => e.dataset.key)")) == new


def _request(url: str, method: str = "GET", headers: dict | None = None, data: bytes | None = None) -> int:
    req = urllib.request.Request(url, method=method, headers=headers or {}, data=data)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_requests_without_the_token_or_from_another_origin_are_refused(server):
    base, token = server["base"], server["token"]
    with store(server) as s:
        key = s.runs("studio")[0].key
    body = ('{"experiment": "studio", "key": "%s", "kind": "score", "value": 3, "rater": "x"}' % key).encode()
    cookie = {"Cookie": f"tracker_studio={token}"}
    assert _request(f"{base}/") == 403
    assert _request(f"{base}/img/studio/{key}") == 403
    assert _request(f"{base}/?token=wrong") == 403
    assert _request(f"{base}/img/studio/{key}", headers=cookie) == 200
    json_h = {**cookie, "Content-Type": "application/json"}
    assert _request(f"{base}/api/rate", "POST", {**json_h, "Origin": "http://evil.example", "X-Tracker-Token": token},
                    body) == 403
    assert _request(f"{base}/api/rate", "POST", {**json_h, "Origin": base}, body) == 403  # no token header
    assert _request(f"{base}/api/rate", "POST", {**json_h, "X-Tracker-Token": token}, body) == 403  # no Origin
    port = base.rsplit(":", 1)[1]
    assert _request(f"{base}/?token={token}", headers={"Host": f"evil.example:{port}"}) == 403  # DNS rebinding
    assert _request(f"{base}/api/rate", "POST", {**json_h, "Origin": base, "X-Tracker-Token": token}, body) == 200
    # no path from a request: a key that is not a run, traversal attempts
    assert _request(f"{base}/img/studio/..%2F..%2Ftracker.db", headers=cookie) in (400, 404)
    assert _request(f"{base}/static/..%2Fstudio.py", headers=cookie) == 404


def test_user_text_executes_nothing_and_every_page_has_a_csp(page, server):
    with store(server) as s:
        run = next(r for r in s.runs("studio") if r.axes["note"] == "odd")
    from tracker.metrics import ratings

    with store(server) as s:
        ratings.add(s, "studio", run.key, "score", 3, "x<script>window.pwned=3</script>", XSS)
    resp = page.goto(f"{server['base']}/run/studio/{run.key}")
    assert "script-src 'self'" in resp.headers["content-security-policy"]
    assert XSS in page.locator("main").text_content()
    for path in ("/", "/e/studio", f"/compare?a=studio/{run.key}&b=studio/{run.key}", "/pairs/studio"):
        resp = page.goto(server["base"] + path)
        assert resp.status == 200 and "default-src 'none'" in resp.headers["content-security-policy"]
    assert not page.errors
