#!/usr/bin/env python3
"""Checks spotd's status page in a real browser: Debian's headless Chromium, driven over the DevTools protocol.

Why a real browser: it proves what HTTP-level tests cannot. The page the server renders is valid enough for a
browser to build the DOM the operators read; signing in through the /login form works with the browser's own
cookie handling (the HttpOnly `spotd_session` cookie set by the 303 — this script never sets a cookie or header
for the page); the page's own script picks up an interruption posted to the API and shows its timeline without a
reload; and the page fits a phone's width.

Steps (each waits with a deadline, polling every 100 ms): sign in (if --token), wait for the pools table, check the
node has no interruption shown, mark the window, POST the notice, wait for the node's timeline (notice + cordon)
in the same window, take a desktop screenshot, emulate a phone, check it does not scroll sideways, screenshot it.

Prints one JSON object on stdout. Exit 0: every check passed; 1: a check failed (`error` says which step and what
was seen); 2: usage error, or Chromium did not start. Progress goes to stderr. Standard library only.

  status_page_check.py --chromium /usr/bin/chromium --base-url http://127.0.0.1:PORT [--token T] --node NODE \
      --notice-path /v1/interruptions --notice-body '{...}' --screenshot a.png --phone-screenshot b.png [--timeout 20]
"""
import argparse, base64, hashlib, json, os, shutil, signal, socket, struct, subprocess, sys, tempfile, time
import urllib.error, urllib.parse, urllib.request

POLL = 0.1
HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # 127.0.0.1 is never behind a proxy
T0 = time.monotonic()


class CheckFailed(Exception):
    """A check failed: exit 1."""


class StartFailed(Exception):
    """Usage error or Chromium did not start: exit 2."""


def log(msg):
    print(f"[status-page {time.monotonic() - T0:5.1f}s] {msg}", file=sys.stderr, flush=True)


class WebSocket:
    """Minimal RFC 6455 client: enough for the DevTools protocol (text messages, fragments, ping/close)."""

    def __init__(self, url, timeout):
        u = urllib.parse.urlsplit(url)
        self.sock = socket.create_connection((u.hostname, u.port or 80), timeout=timeout)
        self.buf = b""
        key = base64.b64encode(os.urandom(16)).decode()
        # No Origin header: Chromium refuses an Origin it was not told to allow (--remote-allow-origins).
        self.sock.sendall((f"GET {u.path or '/'}{'?' + u.query if u.query else ''} HTTP/1.1\r\nHost: {u.netloc}\r\n"
                           "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                           f"Sec-WebSocket-Key: {key}\r\n\r\n").encode())
        while b"\r\n\r\n" not in self.buf:
            self._fill(time.monotonic() + timeout)
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        accept = base64.b64encode(hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest())
        if lines[0].split()[1:2] != ["101"] or headers.get("sec-websocket-accept") != accept.decode():
            raise ConnectionError(f"WebSocket handshake refused: {lines[0]}")

    @staticmethod
    def _mask(data, key):
        n = len(data)
        return (int.from_bytes(data, "big") ^ int.from_bytes((key * (n // 4 + 1))[:n], "big")).to_bytes(n, "big")

    def _fill(self, deadline):
        self.sock.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = self.sock.recv(1 << 16)
        if not chunk:
            raise ConnectionError("DevTools connection closed (did Chromium crash?)")
        self.buf += chunk

    def _read(self, n, deadline):
        while len(self.buf) < n:
            self._fill(deadline)
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def send(self, opcode, payload):
        n, mask = len(payload), os.urandom(4)
        head = bytes([0x80 | opcode])
        if n < 126:
            head += bytes([0x80 | n])
        elif n < 1 << 16:
            head += bytes([0x80 | 126]) + struct.pack("!H", n)
        else:
            head += bytes([0x80 | 127]) + struct.pack("!Q", n)
        self.sock.sendall(head + mask + self._mask(payload, mask))

    def recv_text(self, deadline):
        """The next complete text message; answers pings, joins continuation frames."""
        message = b""
        while True:
            b0, b1 = self._read(2, deadline)
            opcode, n = b0 & 0x0F, b1 & 0x7F
            if n >= 126:
                n = struct.unpack("!H" if n == 126 else "!Q", self._read(2 if n == 126 else 8, deadline))[0]
            mask = self._read(4, deadline) if b1 & 0x80 else None  # servers do not mask, but may
            payload = self._read(n, deadline)
            if mask:
                payload = self._mask(payload, mask)
            if opcode == 0x8:
                raise ConnectionError("DevTools connection closed by Chromium")
            if opcode == 0x9:
                self.send(0xA, payload)
            elif opcode in (0x0, 0x1, 0x2):
                message += payload
                if b0 & 0x80:
                    return message.decode()

    def close(self):
        self.sock.close()


class Page:
    """One DevTools page target: commands matched to their responses by id, events ignored."""

    def __init__(self, ws, timeout):
        self.ws, self.timeout, self.next_id = ws, timeout, 0

    def call(self, method, **params):
        self.next_id += 1
        self.ws.send(0x1, json.dumps({"id": self.next_id, "method": method, "params": params}).encode())
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                msg = json.loads(self.ws.recv_text(deadline))
            except socket.timeout:
                raise CheckFailed(f"DevTools: no answer to {method} within {self.timeout:g}s") from None
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error'].get('message')}")
                return msg.get("result", {})

    def eval(self, expression):
        r = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            d = r["exceptionDetails"]
            raise RuntimeError(d.get("exception", {}).get("description") or d.get("text"))
        return r["result"].get("value")

    def wait(self, step, what, expression, done, timeout):
        """Polls `expression` until done(value); fails naming the step, what it waited for and what it last saw."""
        deadline, seen = time.monotonic() + timeout, None
        while True:
            try:
                seen = self.eval(expression)
                if done(seen):
                    return seen
            except RuntimeError as e:  # e.g. the execution context was destroyed by a navigation in flight
                seen = f"(evaluation failed: {e})"
            if time.monotonic() >= deadline:
                raise CheckFailed(f"{step}: timed out after {timeout:g}s waiting for {what}; last seen: "
                                  f"{json.dumps(seen)[:600]}")
            time.sleep(POLL)

    def navigate(self, step, url):
        r = self.call("Page.navigate", url=url)
        if r.get("errorText"):
            raise CheckFailed(f"{step}: navigating to {url} failed: {r['errorText']}")

    def screenshot(self, path):
        """Whole page as PNG (up to 8000 CSS px tall), at the current device metrics."""
        m = self.call("Page.getLayoutMetrics")
        content, viewport = m.get("cssContentSize", {}), m.get("cssLayoutViewport", {})
        clip = {"x": 0, "y": 0, "scale": 1, "width": max(content.get("width", 1), viewport.get("clientWidth", 1)),
                "height": min(8000, max(content.get("height", 1), viewport.get("clientHeight", 1)))}
        data = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True, clip=clip)["data"]
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "wb") as f:
            f.write(base64.b64decode(data))
        return path


def stderr_tail(path, lines=15):
    """The end of Chromium's stderr, without the D-Bus complaints of a machine that has no D-Bus."""
    try:
        with open(path, errors="replace") as f:
            text = [l.rstrip() for l in f if "dbus" not in l and "unexpected operator" not in l and l.strip()]
    except OSError:
        return ""
    return "\n".join(text[-lines:])


def start_chromium(chromium, profile):
    """Starts Chromium in its own process group (so that stop_chromium also ends its renderers)."""
    args = [chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
            "--no-default-browser-check", "--no-proxy-server", "--remote-debugging-port=0",
            f"--user-data-dir={profile}", "--window-size=1280,1000", "about:blank"]
    err = open(os.path.join(profile, "chromium-stderr.log"), "wb")
    try:
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                                start_new_session=True)
    except OSError as e:
        raise StartFailed(f"cannot run {chromium}: {e}") from None
    finally:
        err.close()
    return proc


def devtools_page(proc, profile, timeout):
    """The WebSocket URL of Chromium's page target, once DevToolsActivePort names the port it listens on."""
    deadline, port_file = time.monotonic() + timeout, os.path.join(profile, "DevToolsActivePort")
    err = os.path.join(profile, "chromium-stderr.log")
    while True:
        if proc.poll() is not None:
            raise StartFailed(f"Chromium exited with status {proc.returncode} before DevTools was up:\n"
                              + stderr_tail(err))
        try:
            with open(port_file) as f:
                port = f.readline().strip()
            if port.isdigit():  # the file can be seen before its first line is written
                targets = json.load(HTTP.open(f"http://127.0.0.1:{port}/json/list", timeout=timeout))
                pages = [t for t in targets if t.get("type") == "page"]  # not the "browser_ui" omnibox popups
                if pages:
                    return pages[0]["webSocketDebuggerUrl"]
        except (OSError, ValueError):
            pass
        if time.monotonic() >= deadline:
            raise StartFailed(f"Chromium's DevTools page target did not come up within {timeout:g}s:\n"
                              + stderr_tail(err))
        time.sleep(POLL)


def stop_chromium(proc):
    """SIGTERM to Chromium's process group, then SIGKILL to whatever is left of it (renderers, zygotes)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            pass


def post_notice(args):
    req = urllib.request.Request(args.base_url.rstrip("/") + "/" + args.notice_path.lstrip("/"),
                                 data=args.notice_body.encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    notice_token = args.notice_token or args.token
    if notice_token:
        req.add_header("Authorization", f"Bearer {notice_token}")
    try:
        with HTTP.open(req, timeout=args.timeout) as r:
            return r.status
    except urllib.error.HTTPError as e:
        raise CheckFailed(f"notice: POST {args.notice_path} answered {e.code}: {e.read()[:500]!r}") from None
    except OSError as e:
        raise CheckFailed(f"notice: POST {args.notice_path} failed: {e}") from None


def run(page, args, out):
    base, node, t = args.base_url.rstrip("/"), json.dumps(args.node), args.timeout
    if args.token:
        log("signing in through /login")
        page.navigate("sign-in", base + "/login")
        page.wait("sign-in", "the form input[name=token]", "!!document.querySelector('form input[name=token]')",
                  bool, t)
        page.eval(f"""(() => {{ const i = document.querySelector('form input[name=token]');
            i.value = {json.dumps(args.token)};
            const b = i.form.querySelector('button[type=submit], input[type=submit]');
            b ? b.click() : i.form.submit(); }})()""")
        page.wait("sign-in", "location.pathname === '/' with #pools shown after submitting the token",
                  "({path: location.pathname, pools: !!document.querySelector('#pools'),"
                  " text: (document.body ? document.body.innerText : '').slice(0, 200)})",
                  lambda v: v["path"] == "/" and v["pools"], t)
    else:
        page.navigate("open", base + "/")

    log("waiting for the pools table")
    v = page.wait("pools", "at least one #pools tr[data-pool]",
                  "({path: location.pathname, rows: [...document.querySelectorAll('#pools tr[data-pool]')].map(r =>"
                  " ({pool: r.dataset.pool, text: r.innerText.replace(/\\s+/g, ' ').trim()}))})",
                  lambda v: len(v["rows"]) >= 1, t)
    out["pools"] = [r["pool"] for r in v["rows"]]
    out["pool_rows"] = [r["text"] for r in v["rows"]]

    selector = f"""'#interruptions [data-interruption][data-node="' + CSS.escape({node}) + '"]'"""
    shown = page.eval(f"document.querySelectorAll({selector}).length")
    if shown:
        raise CheckFailed(f"before notice: {shown} interruption(s) for node {args.node} already shown")
    page.eval("window.__spotdMarker = 42")

    log(f"posting the notice to {args.notice_path}")
    log(f"notice accepted: {post_notice(args)}")

    log("waiting for the node's timeline to appear without a reload")
    v = page.wait("live update", f"2+ items in the timeline of node {args.node} (without a reload)",
                  f"""(() => {{ const d = document.querySelector({selector});
                      const items = d ? [...d.querySelectorAll('ol.timeline li')] : [];
                      return {{marker: window.__spotdMarker === 42, node: {node}, found: !!d,
                               timeline: items.map(li => ({{step: li.dataset.step || null,
                                                            text: li.innerText.replace(/\\s+/g, ' ').trim()}}))}}; }})()""",
                  lambda v: not v["marker"] or len(v["timeline"]) >= 2, t)
    out["timeline"] = v["timeline"]
    if not v["marker"]:
        raise CheckFailed("live update: the page reloaded (window.__spotdMarker is gone) instead of updating in place")

    out["events"] = page.eval("[...document.querySelectorAll('#events li')].slice(0, 5)"
                              ".map(li => li.innerText.replace(/\\s+/g, ' ').trim())")
    out["title"] = page.eval("document.title")

    log(f"desktop screenshot to {args.screenshot}")
    out["screenshots"].append(page.screenshot(args.screenshot))

    log("emulating a phone (390x844 @2x)")
    page.call("Emulation.setDeviceMetricsOverride", width=390, height=844, deviceScaleFactor=2, mobile=True)
    page.wait("phone", "the emulated screen to be 390 px wide", "screen.width", lambda w: w == 390, t)
    page.eval("new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")  # layout at the new size
    # Compared with the phone's 390 px, not only with innerWidth: a mobile viewport zooms out to fit content wider
    # than the screen, so innerWidth grows with scrollWidth and "scrollWidth <= innerWidth" alone always holds.
    v = page.eval("({scroll_width: document.documentElement.scrollWidth, inner_width: window.innerWidth,"
                  " layout_width: document.documentElement.clientWidth})")
    out["phone"] = v
    if v["layout_width"] > 390:
        raise CheckFailed(f"phone: the page is laid out {v['layout_width']} px wide on a 390 px phone (no "
                          f"<meta name=viewport content='width=device-width'>?); phone metrics: {json.dumps(v)}")
    if v["scroll_width"] > min(390, v["inner_width"]) + 1:
        raise CheckFailed(f"phone: the page scrolls sideways: its content is {v['scroll_width']} px wide on a 390 px "
                          f"phone (innerWidth {v['inner_width']}: zoomed out to fit)")
    log(f"phone screenshot to {args.phone_screenshot}")
    out["screenshots"].append(page.screenshot(args.phone_screenshot))


class Parser(argparse.ArgumentParser):
    def error(self, message):
        raise StartFailed(f"usage: {message}")


def main():
    out = {"ok": False, "error": None, "pools": [], "pool_rows": [], "timeline": [], "events": [], "title": None,
           "phone": None, "screenshots": []}
    code, proc, profile, ws = 1, None, None, None
    def on_sigterm(*_):  # the test runner gave up on us: still clean up and report
        raise CheckFailed("stopped by SIGTERM")
    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        p = Parser(description=__doc__.split("\n")[0])
        p.add_argument("--chromium", default="chromium")
        p.add_argument("--base-url", required=True)
        p.add_argument("--token", help="the token the browser signs in with")
        p.add_argument("--notice-token", help="the token the notice is posted with (default: --token)")
        p.add_argument("--node", required=True)
        p.add_argument("--notice-path", default="/v1/interruptions")
        p.add_argument("--notice-body", required=True)
        p.add_argument("--screenshot", required=True)
        p.add_argument("--phone-screenshot", required=True)
        p.add_argument("--timeout", type=float, default=20.0, help="seconds allowed for each step")
        args = p.parse_args()
        try:
            json.loads(args.notice_body)
        except ValueError as e:
            raise StartFailed(f"usage: --notice-body is not JSON: {e}") from None
        chromium = shutil.which(args.chromium)
        if not chromium:
            raise StartFailed(f"Chromium not found: {args.chromium}")
        profile = tempfile.mkdtemp(prefix="spotd-status-page-")
        log(f"starting {chromium}")
        proc = start_chromium(chromium, profile)
        ws = WebSocket(devtools_page(proc, profile, args.timeout), args.timeout)
        page = Page(ws, args.timeout)
        log(f"connected to {page.call('Runtime.evaluate', expression='navigator.userAgent')['result']['value']}")
        run(page, args, out)
        out["ok"], code = True, 0
    except StartFailed as e:
        out["error"], code = str(e), 2
    except CheckFailed as e:
        out["error"] = str(e)
    except (OSError, RuntimeError, KeyError, TypeError, ValueError) as e:
        tail = stderr_tail(os.path.join(profile, "chromium-stderr.log")) if profile else ""
        out["error"] = f"{type(e).__name__}: {e}" + (f"\nChromium stderr:\n{tail}" if tail else "")
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # let the cleanup finish
        if ws:
            ws.close()
        if proc:
            stop_chromium(proc)
        if profile:
            shutil.rmtree(profile, ignore_errors=True)
    log("ok" if out["ok"] else f"FAILED: {out['error']}")
    print(json.dumps(out, indent=2))
    return code


if __name__ == "__main__":
    sys.exit(main())
