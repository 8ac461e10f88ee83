"""Check the studio's Pause end to end in headless Chromium, driven over the Chrome DevTools Protocol.

Starts ``splatvlm studio --preset demo`` (tiny random models, CPU) with its data under /tmp, opens it in
Chromium, queues a prompt from the Make tab, and on the Watch tab checks that the step count stops while
"Pause" is ticked and moves again once it is cleared; then presses Stop (or, with --finish, waits for the
end). Screenshots while paused and after resuming go to --shots. Exits non-zero with one line on a failure.

    SPLATVLM_CACHE=... nice -n 15 .venv/bin/python benchmarks/studio_browser_check.py [--steps 300]
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field, fields
from pathlib import Path

from websockets.sync.client import connect

JS_HELPERS = """
window.__sv = {
  input(label) {
    const l = [...document.querySelectorAll('label')].find(l => l.textContent.trim() === label);
    if (!l) return null;
    let e = document.getElementById(l.htmlFor) || l;
    while (e && e.tagName !== 'INPUT' && !e.querySelector('input')) e = e.parentElement;
    return e && (e.tagName === 'INPUT' ? e : e.querySelector('input'));
  },
  button(text) { return [...document.querySelectorAll('button')].find(b => b.textContent.trim() === text); },
  tab(text) { return [...document.querySelectorAll('[role=tab]')].find(b => b.textContent.trim() === text); },
};
"""


@dataclass
class Options:
    chromium: str = field(default="/usr/bin/chromium", metadata={"help": "the Chromium binary"})
    cdp_port: int = field(default=0, metadata={"help": "Chromium's DevTools port (0: a free one)"})
    studio_port: int = field(default=0, metadata={"help": "the studio's port (0: a free one)"})
    steps: int = field(default=300, metadata={"help": "steps of the demo job (enough to outlast the check)"})
    hold_s: float = field(default=15.0, metadata={"help": "seconds the step count must hold while paused"})
    shots: Path = field(default=Path("/tmp/studio-browser-check"), metadata={"help": "screenshot folder"})
    finish: bool = field(default=False, metadata={"help": "let the job finish instead of pressing Stop"})
    timeout_s: float = field(default=600.0, metadata={"help": "longest wait for any one thing"})


class CheckFailed(Exception):
    """A check failed: the message is the one line the script ends with."""


def wait_for(cond, timeout: float, what: str, period: float = 0.5):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if value := cond():
            return value
        time.sleep(period)
    raise CheckFailed(f"timed out after {timeout:.0f} s waiting for {what}")


def steady(read, seconds: float):
    """``read()`` when it gives the same value twice, ``seconds`` apart; else None."""
    first = read()
    time.sleep(seconds)
    return first if first is not None and read() == first else None


def attempt(fn):
    """``fn()``, or None when it fails a check (for retrying with ``wait_for``)."""
    with contextlib.suppress(CheckFailed):
        return fn()


class Page:
    """One Chromium tab over CDP: run JavaScript, click with the mouse, type, take screenshots."""

    def __init__(self, ws_url: str):
        self.ws = connect(ws_url, max_size=None, open_timeout=30)
        self.n = 0

    def call(self, method: str, **params):
        self.n += 1
        self.ws.send(json.dumps({"id": self.n, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv(timeout=60))
            if msg.get("id") == self.n:
                if "error" in msg:
                    raise CheckFailed(f"CDP {method}: {msg['error'].get('message')}")
                return msg["result"]

    def js(self, expr: str):
        r = self.call("Runtime.evaluate", expression=JS_HELPERS + expr, returnByValue=True)
        if "exceptionDetails" in r:
            raise CheckFailed(f"page script failed: {r['exceptionDetails']['text']} in {expr[:80]!r}")
        return r["result"].get("value")

    def click(self, element_js: str, what: str) -> None:
        """Scroll the element into view and click its centre with the mouse, once nothing covers it."""

        def where():
            return self.js(f"""(() => {{ const e = {element_js}; if (!e) return null;
                e.scrollIntoView({{block: 'center'}}); const r = e.getBoundingClientRect();
                const x = r.x + r.width / 2, y = r.y + r.height / 2, hit = document.elementFromPoint(x, y);
                return hit && (e.contains(hit) || hit.contains(e) || hit.htmlFor === e.id) && [x, y]; }})()""")

        x, y = wait_for(where, 30, f"the {what} to be clickable")
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)
        self.call("Input.dispatchMouseEvent", type="mouseMoved", x=1, y=1)  # no tooltip left open

    def type_into(self, label: str, text: str) -> None:
        field = f"__sv.input({json.dumps(label)})"

        def focused():  # the GUI may still be re-rendering right after it appears
            self.click(field, f"{label} field")
            return wait_for(lambda: self.js(f"document.activeElement === {field}"), 2, "focus", 0.2)

        wait_for(lambda: attempt(focused), 30, f"the {label} field's focus", 0.5)
        self.call("Input.insertText", text=text)
        wait_for(lambda: self.value(label) == text, 10, f"the {label} field to read {text!r}")

    def value(self, label: str):
        return self.js(f"(() => {{ const e = __sv.input({json.dumps(label)}); return e && e.value; }})()")

    def text(self) -> str:
        return self.js("document.body.innerText") or ""

    def screenshot(self, path: Path) -> None:
        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"]))


def launch(cmd: list[str], log: Path) -> subprocess.Popen:
    """Start ``cmd`` in a process group of its own (so that ``stop`` ends it and its children)."""
    with open(log, "w") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def start_studio(opts: Options, data: Path) -> tuple[subprocess.Popen, str]:
    cmd = [str(Path(sys.executable).with_name("splatvlm")), "studio", "--out-dir", str(data / "runs"),
           "--port", str(opts.studio_port), "--preset", "demo", "--steps", str(opts.steps)]  # fmt: skip
    proc = launch(cmd, data / "studio.log")

    def url():
        if proc.poll() is not None:
            raise CheckFailed(f"the studio exited ({proc.returncode}); see {data / 'studio.log'}")
        return re.search(r"^studio: (http://\S+)", (data / "studio.log").read_text(), re.M)

    return proc, wait_for(url, opts.timeout_s, "the studio's URL").group(1)


def start_chromium(opts: Options, data: Path, url: str) -> tuple[subprocess.Popen, Page]:
    profile = data / "chromium-profile"
    cmd = [opts.chromium, "--headless=new", f"--remote-debugging-port={opts.cdp_port}", "--no-sandbox",
           "--disable-gpu", "--no-first-run", "--window-size=1280,900", f"--user-data-dir={profile}", url]  # fmt: skip
    proc = launch(cmd, data / "chromium.log")
    port_file = profile / "DevToolsActivePort"
    port = wait_for(lambda: port_file.is_file() and port_file.read_text().split("\n")[0], 60, "Chromium")

    def page_ws():
        with contextlib.suppress(OSError), urllib.request.urlopen(f"http://127.0.0.1:{port}/json") as r:
            pages = [p for p in json.load(r) if p["type"] == "page" and p["url"].startswith(url)]
            return pages and pages[0]["webSocketDebuggerUrl"]

    return proc, Page(wait_for(page_ws, 60, "the studio's tab"))


def stop(proc: subprocess.Popen | None, sig: int, grace: float) -> None:
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def logged_steps(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"  # the trainer appends a line every few steps
    return path.read_text().count("\n") if path.is_file() else 0


def run_check(opts: Options, data: Path) -> None:
    studio, chromium = None, None
    run_dir = data / "runs" / "000-a-red-apple"
    t0 = time.monotonic()

    def note(what: str, step: int | None) -> None:
        t = time.monotonic() - t0
        print(f"t={t:6.1f} s  page step {step}  metrics.jsonl lines {logged_steps(run_dir)}  {what}")

    def step_now() -> int | None:
        m = re.fullmatch(r"(\d+) / \d+", page.value("Step") or "")
        return int(m.group(1)) if m else None

    def toggle_pause(want: bool) -> None:
        page.click("__sv.input('Pause')", "Pause checkbox")
        wait_for(lambda: page.js("__sv.input('Pause').checked") == want, 10, f"Pause to read {want}")
        note(f"clicked Pause ({'on' if want else 'off'})", step_now())

    try:
        studio, url = start_studio(opts, data)
        chromium, page = start_chromium(opts, data, url)
        wait_for(lambda: "empty" in page.text(), opts.timeout_s, "the studio's GUI and its queue")
        page.js("document.querySelectorAll('.mantine-Notification-closeButton').forEach(b => b.click())")
        page.type_into("Prompt", "a red apple")
        page.click("__sv.button('Generate')", "Generate button")
        wait_for(lambda: re.search(r"000-a-red-apple\s+demo", page.text()), 60, "the job in the queue")

        def on_watch_tab():
            page.click("__sv.tab('Watch')", "Watch tab")
            return wait_for(lambda: page.js("!!__sv.input('Pause')"), 2, "the Watch tab", 0.2)

        wait_for(lambda: attempt(on_watch_tab), 30, "the Watch tab")
        first = wait_for(lambda: (step_now() or 0) >= 2 and step_now(), opts.timeout_s, "training")
        note("training", first)
        before = wait_for(lambda: (s := step_now() or 0) > first and s, opts.timeout_s, "the step to grow")
        note("training", before)

        toggle_pause(True)
        paused = wait_for(lambda: steady(step_now, 5.0), 120, "the step count to stop")
        lines = logged_steps(run_dir)
        note("paused", paused)
        for _ in range(round(opts.hold_s)):
            time.sleep(1)
            if (s := step_now()) != paused or logged_steps(run_dir) != lines:
                raise CheckFailed(f"training went on while paused: page step {paused} -> {s}")
        note(f"still paused after {opts.hold_s:.0f} s", paused)
        page.screenshot(opts.shots / "paused.png")

        toggle_pause(False)
        resumed = wait_for(lambda: (s := step_now() or 0) > paused and s, 120, "training to resume")
        note("resumed", resumed)
        wait_for(lambda: logged_steps(run_dir) > lines, 120, "metrics.jsonl to grow again")
        note("resumed (and metrics.jsonl grows)", step_now())
        page.screenshot(opts.shots / "resumed.png")

        if opts.finish:
            wait_for(lambda: "finished" in page.text(), opts.timeout_s, "the job to finish")
            note("finished", step_now())
        else:
            page.click("__sv.button('Stop')", "Stop button")
            note("clicked Stop", step_now())
            wait_for(lambda: "stopped" in page.text(), opts.timeout_s, "the job to stop")
            if not (run_dir / "checkpoint.pt").is_file():
                raise CheckFailed("the stopped job left no checkpoint.pt")
            note("stopped, with a checkpoint", step_now())
    finally:
        stop(chromium, signal.SIGTERM, 10)
        stop(studio, signal.SIGINT, 60)


def parse(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for f in fields(Options):
        flag, text = "--" + f.name.replace("_", "-"), f.metadata["help"]
        if f.type == "bool":
            parser.add_argument(flag, action="store_true", help=text)
        else:
            kind = {"int": int, "float": float, "Path": Path}.get(f.type, str)
            parser.add_argument(flag, type=kind, default=f.default, help=f"{text} (%(default)s)")
    return Options(**vars(parser.parse_args(argv)))


def main(argv: list[str] | None = None) -> int:
    opts = parse(argv)
    opts.shots.mkdir(parents=True, exist_ok=True)
    data = Path(tempfile.mkdtemp(prefix="studio-browser-check-", dir="/tmp"))
    try:
        run_check(opts, data)
    except Exception as e:
        why = str(e) if isinstance(e, CheckFailed) else f"{type(e).__name__}: {e}"
        print(f"FAILED: {why} (logs in {data})", file=sys.stderr)
        return 1
    shutil.rmtree(data, ignore_errors=True)
    print(f"OK: pause holds the step count and unpause resumes it; screenshots in {opts.shots}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
