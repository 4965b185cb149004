"""Drives the console of a real `sluice serve` in headless Chromium
(Debian's `chromium` and `chromium-driver`, through Selenium's WebDriver):
sign in, run a flow through its inputs form and watch it finish, open a
step's output, sync a connection and see its counts, resend a webhook
message, and the refusals: a wrong token, a `read` token pressing "Run",
a form without its CSRF token, a session cookie replayed after sign-out.
Text a user or a partner controls (a step's output, a receiver's answer)
must come back escaped, never as markup. Every control must have a label.
A screenshot of each page is written to SHOTS.

Usage: test_console.py BASE_URL ADMIN_TOKEN READ_TOKEN SHOTS RECEIVER_PORT MAXIMO_URL MAXIMO_KEY WASM
"""

import http.server
import os
import sys
import threading
import time

import requests
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
from selenium.webdriver.support.ui import Select, WebDriverWait

base, admin, reader, shots, receiver_port, maximo_url, maximo_key, wasm = sys.argv[1:9]
os.makedirs(shots, exist_ok=True)
XSS = "<img src=x onerror=alert(1)>"
failures = []


def check(ok, what):
    print(("ok   " if ok else "FAIL ") + what, flush=True)
    if not ok:
        failures.append(what)


class Receiver(http.server.BaseHTTPRequestHandler):
    """The webhook receiver: answers 200 with markup in its body."""

    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        body = b"<script>document.title='pwned'</script>thanks"
        self.send_response(200)
        self.send_header("content-type", "text/html")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


server = http.server.ThreadingHTTPServer(("127.0.0.1", int(receiver_port)), Receiver)
threading.Thread(target=server.serve_forever, daemon=True).start()
api = requests.Session()
api.headers["Authorization"] = f"Bearer {admin}"
res = api.post(
    f"{base}/v1/webhooks/endpoints",
    json={"url": f"http://127.0.0.1:{receiver_port}/hook", "event_types": ["order.*"]},
    timeout=10,
)
assert res.status_code == 201, res.text

options = webdriver.ChromeOptions()
options.binary_location = "/usr/bin/chromium"
for arg in ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1000"]:
    options.add_argument(arg)
driver = webdriver.Chrome(options=options, service=Service("/usr/bin/chromedriver"))
# Live pages (a running run, a running sync, the runs list) reload
# themselves, and a form's answer replaces the page: an element read
# meanwhile is stale or "aborted by navigation", so waits look again.
wait = WebDriverWait(driver, 30, ignored_exceptions=[StaleElementReferenceException, WebDriverException])


def shot(name):
    driver.save_screenshot(os.path.join(shots, f"{name}.png"))


def text():
    for _ in range(20):
        try:
            return driver.find_element(By.TAG_NAME, "body").text
        except StaleElementReferenceException:
            time.sleep(0.1)
    return driver.find_element(By.TAG_NAME, "body").text


def unlabelled_controls():
    """Controls a screen reader could not name."""
    return driver.execute_script(
        """
        return [...document.querySelectorAll('input:not([type=hidden]), select, textarea')]
          .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label'))
          .map(e => e.outerHTML);
        """
    )


def labelled(page):
    missing = unlabelled_controls()
    check(not missing, f"{page}: every control has a label {missing}")


def tab_to(matches, limit=80):
    """Presses Tab (keyboard only) until the focused element matches; the
    element, or None when `limit` presses never reach one."""
    for _ in range(limit):
        ActionChains(driver).send_keys(Keys.TAB).perform()
        el = driver.switch_to.active_element
        if matches(el):
            return el
    return None


def focus_visible(el):
    """Whether the focused element shows where the keyboard is."""
    style = driver.execute_script(
        "const s = getComputedStyle(arguments[0]); return [s.outlineStyle, s.outlineWidth, s.boxShadow];", el
    )
    return (style[0] != "none" and style[1] != "0px") or style[2] != "none"


def sign_in(token):
    driver.get(f"{base}/login")
    box = driver.find_element(By.ID, "token")
    box.clear()
    box.send_keys(token)
    box.submit()


try:
    # Not signed in: every page leads to the sign-in page.
    driver.get(f"{base}/runs")
    check(driver.current_url.endswith("/login"), "a page without a session goes to sign-in")
    labelled("sign-in")
    shot("01-sign-in")
    sign_in("slc_0123_wrong")
    check("malformed token" in text() or "unknown token" in text(), "a wrong token is refused with its reason")

    sign_in(admin)
    wait.until(lambda d: "Flows" in d.title)
    cookie = driver.get_cookie("sluice_session")
    check(cookie is not None and cookie.get("httpOnly") and cookie.get("sameSite") == "Strict", f"the session cookie is HttpOnly and SameSite=Strict: {cookie}")
    check("order-check" in text(), "the flows page lists the flow")
    labelled("flows")
    shot("02-flows")

    # Run the flow through the form made from its typed inputs.
    driver.find_element(By.LINK_TEXT, "order-check").click()
    wait.until(lambda d: d.find_elements(By.ID, "input-order"))
    check(len(driver.find_elements(By.CSS_SELECTOR, "svg.dag g")) == 2, "the flow's DAG is drawn with its 2 steps")
    labelled("flow")
    shot("03-flow")
    driver.find_element(By.ID, "input-order").send_keys(XSS)
    qty = driver.find_element(By.ID, "input-quantity")
    qty.clear()
    qty.send_keys("3")
    driver.find_element(By.NAME, "input.rush").click()
    driver.find_element(By.XPATH, "//button[text()='Run']").click()
    wait.until(lambda d: "/runs/" in d.current_url)
    run_url = driver.current_url
    wait.until(lambda d: d.find_element(By.ID, "run-status").text == "succeeded")
    check(True, "the run finished: succeeded (the page updates itself)")
    # The step's output, opened: typed inputs went through, markup escaped.
    driver.find_element(By.XPATH, "//summary[text()='Output of check']").click()
    out = driver.find_element(By.XPATH, "//summary[text()='Output of check']/following-sibling::pre").text
    check('"quantity": 3' in out and '"rush": true' in out, f"the step's output shows the typed inputs: {out}")
    check(XSS in out, "the step output's markup is shown as text")
    check(not driver.find_elements(By.CSS_SELECTOR, "main img"), "the step output's markup made no element")
    check(not driver.find_elements(By.XPATH, "//summary[text()='Input of check']"), "a `set` step, which sends nothing, shows no input")
    # The webhook step's input: the payload its expression gave, escaped.
    driver.find_element(By.XPATH, "//summary[text()='Input of tell']").click()
    sent = driver.find_element(By.XPATH, "//summary[text()='Input of tell']/following-sibling::pre").text
    check('"event": "order.checked"' in sent and '"quantity": 3' in sent and XSS in sent, f"the step's input shows the payload it sent: {sent}")
    check(not driver.find_elements(By.CSS_SELECTOR, "main img"), "the step input's markup made no element")
    check(len(driver.find_elements(By.CSS_SELECTOR, "svg.dag g.n-succeeded")) == 2, "the run's graph colours both steps succeeded")
    labelled("run")
    shot("04-run")

    # The same run by keyboard alone: Tab to each field, type, Tab to
    # "Run", Enter; each focused control shows the focus.
    driver.get(f"{base}/flows/order-check")
    box = tab_to(lambda e: e.get_attribute("id") == "input-order")
    check(box is not None, "the order field is reached by Tab")
    if box is not None:
        check(focus_visible(box), "the focused field shows the keyboard focus")
        box.send_keys("KB-7")
        qty = tab_to(lambda e: e.get_attribute("id") == "input-quantity", limit=5)
        check(qty is not None, "Tab goes on to the next field in order")
        if qty is not None:
            qty.send_keys(Keys.CONTROL, "a")
            qty.send_keys("2")
        rush = tab_to(lambda e: e.get_attribute("name") == "input.rush", limit=5)
        check(rush is not None, "the checkbox is reached by Tab")
        if rush is not None:
            rush.send_keys(Keys.SPACE)
        run = tab_to(lambda e: e.tag_name == "button" and e.text == "Run", limit=10)
        check(run is not None and focus_visible(run), "the Run button is reached by Tab and shows the focus")
        if run is not None:
            run.send_keys(Keys.ENTER)
            wait.until(lambda d: "/runs/" in d.current_url and d.current_url != run_url)
            wait.until(lambda d: d.find_element(By.ID, "run-status").text == "succeeded")
            driver.find_element(By.XPATH, "//summary[text()='Output of check']").click()
            out = driver.find_element(By.XPATH, "//summary[text()='Output of check']/following-sibling::pre").text
            check('"order": "KB-7"' in out and '"quantity": 2' in out and '"rush": true' in out, f"a run started by keyboard alone took its inputs: {out}")

    # Connect the Maximo emulator through the connect flow: a wrong key is
    # said in plain words, the right one is tested and saved.
    driver.get(f"{base}/connections")
    driver.find_element(By.LINK_TEXT, "Connect a system").click()
    wait.until(lambda d: d.find_elements(By.PARTIAL_LINK_TEXT, "IBM Maximo"))
    driver.find_element(By.PARTIAL_LINK_TEXT, "IBM Maximo").click()
    wait.until(lambda d: d.find_elements(By.ID, "c-id"))
    labelled("connect form")

    def fill(key, name=True):
        if name:
            box = driver.find_element(By.ID, "c-id")
            box.clear()
            box.send_keys("plant")
        for field, value in [("p-base_url", maximo_url), ("p-site", "BEDFORD")]:
            box = driver.find_element(By.ID, field)
            box.clear()
            box.send_keys(value)
        driver.find_element(By.ID, "k-api_key").send_keys(key)
        driver.find_element(By.XPATH, "//button[text()='Test and save']").click()

    fill("not-the-key")
    wait.until(lambda d: d.find_elements(By.ID, "problem"))
    check("Wrong credentials" in driver.find_element(By.ID, "problem").text, "a wrong key is refused in plain words")
    shot("05-connect-wrong-key")
    fill(maximo_key)
    wait.until(lambda d: d.current_url.endswith("/connections/plant"))
    check(True, "the right key is tested and the connection saved")
    # Sync it and see its counts.
    Select(driver.find_element(By.ID, "s-entity")).select_by_visible_text("work_order")
    driver.find_element(By.XPATH, "//button[text()='Sync now']").click()
    wait.until(lambda d: "added" in d.find_element(By.ID, "syncs").text and "running" not in d.find_element(By.ID, "syncs").text)
    check("12 added" in driver.find_element(By.ID, "syncs").text, "the sync shows its counts: " + driver.find_element(By.ID, "syncs").text)
    Select(driver.find_element(By.ID, "r-entity")).select_by_visible_text("work_order")
    driver.find_element(By.XPATH, "//button[text()='Browse']").click()
    wait.until(lambda d: "entity=work_order" in d.current_url)
    check(len(driver.find_elements(By.CSS_SELECTOR, "main details")) == 12, "the cached work orders are browsable")
    labelled("connection")
    shot("06-connection")

    # A connect link: made by the admin, opened without signing in.
    driver.get(f"{base}/connect")
    Select(driver.find_element(By.ID, "l-def")).select_by_value("maximo")
    driver.find_element(By.ID, "l-id").send_keys("partner-plant")
    driver.find_element(By.XPATH, "//button[text()='Make a link']").click()
    link = wait.until(lambda d: d.find_element(By.ID, "link")).get_attribute("value")
    shot("07-connect-link")
    cookie_before = driver.get_cookie("sluice_session")
    driver.delete_all_cookies()
    driver.get(link)
    check(not driver.find_elements(By.CSS_SELECTOR, "nav"), "a connect link shows no navigation")
    labelled("connect link")
    fill(maximo_key, name=False)
    wait.until(lambda d: "Connected" in d.title)
    check(True, "connected through the link")
    driver.get(link)
    check("already used" in text(), "a used link is refused")
    driver.add_cookie({"name": "sluice_session", "value": cookie_before["value"], "path": "/", "httpOnly": True, "sameSite": "Strict"})

    # The webhook message the run sent: its attempt and the receiver's answer.
    msg_link = None
    for _ in range(100):
        driver.get(f"{base}/webhooks")
        links = driver.find_elements(By.CSS_SELECTOR, "a[href^='/webhooks/messages/']")
        if links and "delivered" in text():
            msg_link = links[0].get_attribute("href")
            break
        time.sleep(0.2)
    check(msg_link is not None, "the run's webhook message was delivered")
    labelled("webhooks")
    shot("08-webhooks")
    driver.get(msg_link)
    rows = lambda: len(driver.find_elements(By.CSS_SELECTOR, "tbody tr"))
    before = rows()
    check("<script>document.title='pwned'</script>thanks" in text(), "the receiver's answer is shown as text")
    check(driver.title != "pwned", "the receiver's script did not run")
    driver.find_element(By.XPATH, "//button[text()='Resend']").click()
    # The form's answer is the message page again, pending (no Resend button)
    # or already delivered once more: wait for it before loading the page.
    wait.until(lambda d: not d.find_elements(By.XPATH, "//button[text()='Resend']") or rows() > before)
    for _ in range(100):
        driver.get(msg_link)
        if rows() > before:
            break
        time.sleep(0.2)
    check(rows() > before, f"resend made a new attempt ({before} before)")
    shot("09-message")

    # Endpoints: add one (its secret shown once), disable it, rotate its secret.
    driver.get(f"{base}/webhooks")
    driver.find_element(By.ID, "e-url").send_keys(f"http://127.0.0.1:{receiver_port}/second")
    driver.find_element(By.ID, "e-types").send_keys("run.failed, sync.*")
    driver.find_element(By.ID, "e-desc").send_keys("second receiver")
    driver.find_element(By.XPATH, "//button[text()='Add endpoint']").click()
    secret = wait.until(lambda d: d.find_element(By.ID, "secret")).get_attribute("value")
    check(secret.startswith("whsec_"), "a new endpoint's signing secret is shown once")
    driver.get(f"{base}/webhooks")
    second = "//tr[td[contains(., 'second receiver')]]"
    driver.find_element(By.XPATH, second + "//button[text()='Disable']").click()
    # The row of the page the form went back to (not the one it left).
    wait.until(lambda d: d.find_elements(By.XPATH, second + "//button[text()='Enable']"))
    check("disabled" in driver.find_element(By.XPATH, second).text, "the endpoint is disabled")
    driver.find_element(By.XPATH, second + "//button[text()='Rotate secret']").click()
    rotated = wait.until(lambda d: d.find_element(By.ID, "secret")).get_attribute("value")
    check(rotated.startswith("whsec_") and rotated != secret, "rotating gives a new secret")

    # A plugin uploaded from the browser.
    driver.get(f"{base}/plugins")
    driver.find_element(By.ID, "pl-file").send_keys(wasm)
    driver.find_element(By.ID, "pl-name").send_keys("echo-console")
    driver.find_element(By.ID, "pl-version").send_keys("1.0.0")
    driver.find_element(By.XPATH, "//button[text()='Upload']").click()
    wait.until(lambda d: d.current_url.endswith("/plugins") and "echo-console" in text())
    check("1.0.0" in text(), "the uploaded plugin is listed with its version and size")
    labelled("plugins")

    # A form without its CSRF token is refused, with the session's cookie.
    cookie = driver.get_cookie("sluice_session")
    jar = {"sluice_session": cookie["value"]}
    res = requests.post(f"{base}/flows/order-check/run", data={"input.order": "x"}, cookies=jar, allow_redirects=False, timeout=10)
    check(res.status_code == 403 and "CSRF" in res.text, f"a form without its CSRF token is refused: {res.status_code}")
    res = requests.post(f"{base}/flows/order-check/run", data={"input.order": "x", "csrf": "forged"}, cookies=jar, allow_redirects=False, timeout=10)
    check(res.status_code == 403, f"a form with a forged CSRF token is refused: {res.status_code}")

    # Sign out; the old cookie no longer opens anything.
    driver.find_element(By.XPATH, "//button[text()='Sign out']").click()
    wait.until(lambda d: d.current_url.endswith("/login"))
    res = requests.get(f"{base}/runs", cookies=jar, allow_redirects=False, timeout=10)
    check(res.status_code == 303 and res.headers.get("location") == "/login", f"a cookie replayed after sign-out is refused: {res.status_code}")

    # A read token sees, cannot run.
    sign_in(reader)
    wait.until(lambda d: "Flows" in d.title)
    driver.get(f"{base}/flows/order-check")
    run_button = driver.find_element(By.XPATH, "//button[text()='Run']")
    check(not run_button.is_enabled(), "a read token's Run button is disabled")
    shot("10-flow-read-token")
    csrf = driver.find_element(By.NAME, "csrf").get_attribute("value")
    jar = {"sluice_session": driver.get_cookie("sluice_session")["value"]}
    res = requests.post(f"{base}/flows/order-check/run", data={"input.order": "x", "csrf": csrf}, cookies=jar, allow_redirects=False, timeout=10)
    check(res.status_code == 403 and "scope `read`" in res.text, f"a read token's run is refused by the API's scope check: {res.status_code}")
    driver.get(run_url)
    check(not driver.find_elements(By.XPATH, "//button[text()='Cancel' or text()='Re-run from the failed step']"), "a read token sees no run actions")
    driver.get(f"{base}/runs?status=succeeded")
    check("order-check" in text(), "the runs list filtered by status shows the run")
    driver.get(f"{base}/runs?trigger=manual&since=1h")
    check("order-check" in text(), "the runs list filtered by trigger and age shows the run")
    driver.get(f"{base}/runs?trigger=schedule")
    check("No runs match" in text(), "no scheduled run matches the trigger filter")
    labelled("runs")
    shot("11-runs")
    driver.get(f"{base}/plugins")
    check(not driver.find_elements(By.ID, "pl-file"), "a read token sees no upload form")
    shot("12-plugins")

    # The public status page needs no sign-in.
    res = requests.get(f"{base}/status", timeout=10)
    check(res.status_code == 200 and "operational" in res.text, "the status page answers without sign-in")
    check("System 1" in res.text and "online" in res.text, "the status page shows the connected systems")
    check("plant" not in res.text and "mx-partner" not in res.text, "the public status page does not name connections by default")
    driver.get(f"{base}/status")
    shot("13-status")
finally:
    driver.quit()
    server.shutdown()

if failures:
    print(f"{len(failures)} check(s) failed")
    sys.exit(1)
print("console: every check passed")
