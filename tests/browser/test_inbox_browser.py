"""The inbox in a real browser: sign-in, live updates, handover, claim, answer, resolve, templates.

The app runs in a thread with a real RQ worker process; the user's messages arrive by signed
webhook and the answers reach the fake Graph API (pytest-httpserver).
"""

from __future__ import annotations

from datetime import timedelta

from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

from tests.inbox_support import (
    PASSWORD,
    TEMPLATES,
    contact_id,
    install_templates,
    make_operator,
)

WAIT = 20  # seconds; the page polls every 3


def wait(driver, check, timeout: float = WAIT):
    """Until ``check(driver)`` is true; the list and panels are replaced by polling, so an element
    found a moment ago may be gone: that counts as not yet."""
    return WebDriverWait(driver, timeout, poll_frequency=0.1,
                         ignored_exceptions=(StaleElementReferenceException,)).until(lambda d: check(d))


def sign_in(driver, live, name: str, password: str = PASSWORD) -> None:
    driver.get(f"{live.url}/inbox/")
    assert "/login" in driver.current_url  # every page asks for a sign-in first
    driver.find_element(By.ID, "name").send_keys(name)
    driver.find_element(By.ID, "password").send_keys(password)
    driver.find_element(By.ID, "sign-in").click()
    wait(driver, lambda d: d.find_elements(By.ID, "logout"))


def text_of(driver, element_id: str) -> str:
    """An element's text, read in one script: polling replaces the list and panels, and an
    element found one WebDriver call earlier may be gone when its text is asked for. As with
    WebDriver's own ``.text``, a hidden element has none, and spaces and tabs (between table
    cells) collapse to one space."""
    return driver.execute_script("const e = document.getElementById(arguments[0]);"
                                 "return e && e.checkVisibility() ? e.innerText.replace(/[ \\t]+/g, ' ').trim()"
                                 " : ''", element_id)


def list_text(driver) -> str:
    return text_of(driver, "conversations")


def thread_texts(driver) -> list[str]:
    return driver.execute_script("return Array.from(document.querySelectorAll('#thread .msg .text'))"
                                 ".filter(e => e.checkVisibility()).map(e => e.innerText.trim())")


def test_handover_claim_answer_resolve(live, browser, shoot):
    app, graph = live.app, live.graph
    for name, role in (("Bo", "agent"), ("Cy", "agent"), ("Ada", "admin")):
        make_operator(app, name, role)
    bo = browser()
    bo.get(f"{live.url}/login")
    shoot(bo, "login")
    bo.find_element(By.ID, "name").send_keys("Bo")
    bo.find_element(By.ID, "password").send_keys("not the password")
    bo.find_element(By.ID, "sign-in").click()
    # the click returns before the answer page has loaded: wait for it, as sign_in does
    error = wait(bo, lambda d: d.find_elements(By.ID, "login-error"))
    assert "Wrong name or password" in error[0].text
    sign_in(bo, live, "Bo")
    bo.execute_script("window.__same_page = true")

    # a user writes: the conversation appears without a reload, and the bot answers
    live.webhook("27900", "hi", name="Maria")
    wait(bo, lambda d: "Maria" in list_text(d))
    live.wait_for(lambda: graph.texts("27900"), what="the bot's menu")
    assert bo.execute_script("return window.__same_page") is True

    cid = contact_id(app, "27900")
    wait(bo, lambda d: d.find_element(By.CSS_SELECTOR, f'#conversations [data-contact="{cid}"] a').click() or True)
    wait(bo, lambda d: d.find_elements(By.ID, "thread"))
    wait(bo, lambda d: "hi" in thread_texts(d))
    assert "The bot is handling this conversation" in text_of(bo, "holder")
    bo.execute_script("window.__same_page = true")

    # the user asks for a person: the thread and the reply box follow without a reload
    live.webhook("27900", "cancel", name="Maria")
    live.wait_for(lambda: len(graph.texts("27900")) >= 2, what="the cancel notice")
    live.webhook("27900", "agent", name="Maria")
    live.wait_for(lambda: len(graph.texts("27900")) >= 3, what="the topic question")
    live.webhook("27900", "My order 1234 is late", name="Maria")
    wait(bo, lambda d: d.find_elements(By.ID, "claim"))
    assert "My order 1234 is late" in thread_texts(bo)
    assert "asked for a person" in text_of(bo, "thread")
    badge = wait(bo, lambda d: d.find_element(By.CSS_SELECTOR, f'[data-contact="{cid}"] .badge.waiting').text)
    assert badge.startswith("waiting")
    assert wait(bo, lambda d: d.find_element(By.CSS_SELECTOR, "#conversations li").get_attribute("data-contact")
                ) == str(cid)
    assert text_of(bo, "waiting-count") == "1"
    assert int(bo.find_element(By.TAG_NAME, "body").get_attribute("data-alerted") or 0) >= 1  # sound + notice
    assert bo.execute_script("return window.__same_page") is True
    shoot(bo, "inbox-waiting")

    # claim and answer: the answers reach the Graph API in order
    bo.find_element(By.ID, "claim").click()
    wait(bo, lambda d: d.find_elements(By.ID, "reply-text"))
    for text in ("Hi Maria, Bo here.", "Let me check order 1234."):
        bo.find_element(By.ID, "reply-text").send_keys(text)
        bo.find_element(By.ID, "send").click()
        wait(bo, lambda d, text=text: text in thread_texts(d))
    live.wait_for(lambda: graph.texts("27900")[-2:] == ["Hi Maria, Bo here.", "Let me check order 1234."],
                  what="both answers at the Graph API, in order")
    wait(bo, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#thread .msg.origin-operator .tick-sent")) == 2)
    shoot(bo, "conversation")

    # a second operator sees who holds it and cannot answer
    cy = browser()
    sign_in(cy, live, "Cy")
    cy.get(f"{live.url}/inbox/c/{cid}")
    assert "Bo holds this conversation" in text_of(cy, "held-by")
    assert not cy.find_elements(By.ID, "reply-text") and not cy.find_elements(By.ID, "claim")
    status = cy.execute_script("""
        const token = document.querySelector('input[name=csrf_token]').value;
        const body = new URLSearchParams({csrf_token: token, text: 'Cy answering too'});
        return fetch(arguments[0], {method: 'POST', body: body}).then(r => r.status);""",
                               f"{live.url}/inbox/c/{cid}/send")
    assert status == 409
    shoot(cy, "held-by-another")

    # resolve: the bot answers the user's next message again
    bo.find_element(By.ID, "resolve").click()
    wait(bo, lambda d: d.find_elements(By.ID, "take-over"))
    live.webhook("27900", "hi", name="Maria")
    live.wait_for(lambda: graph.texts("27900")[-1].startswith("Hello"), what="the bot's menu again")
    wait(bo, lambda d: any(t.startswith("Hello") for t in thread_texts(d)[-2:]))
    assert "Cy answering too" not in graph.texts("27900")
    assert "Bo resolved the conversation" in text_of(bo, "thread")

    # the audit trail names who did what
    bo.get(f"{live.url}/inbox/audit")
    audit = text_of(bo, "audit")
    for line in ("Bo web resolve", "Bo web send", "Bo web claim", "bot flow handover"):
        assert line in audit, line
    shoot(bo, "audit")


def test_outside_the_window_templates_flows_and_account(live, browser, shoot):
    from crm.base.extensions import db
    from crm.base.models import Contact, utcnow

    app, graph = live.app, live.graph
    make_operator(app, "Ada", "admin")
    install_templates(app, TEMPLATES)
    live.webhook("27910", "hi", name="Jonas")
    live.wait_for(lambda: graph.texts("27910"), what="the bot's menu")
    cid = contact_id(app, "27910")
    with app.app_context():
        db.session.get(Contact, cid).last_inbound_at = utcnow() - timedelta(hours=26)
        db.session.commit()

    ada = browser()
    sign_in(ada, live, "Ada")
    ada.get(f"{live.url}/inbox/c/{cid}")
    ada.find_element(By.ID, "take-over").click()
    wait(ada, lambda d: d.find_elements(By.ID, "template-select"))
    assert not ada.find_elements(By.ID, "reply-text")  # only templates outside the window
    assert "window is closed" in text_of(ada, "reply")
    options = [o.text for o in Select(ada.find_element(By.ID, "template-select")).options]
    assert any(o.startswith("order_update") for o in options) and not any("still_pending" in o for o in options)
    Select(ada.find_element(By.ID, "template-select")).select_by_value("order_update:en_US")
    fieldset = ada.find_element(By.CSS_SELECTOR, 'fieldset[data-template="order_update:en_US"]')
    inputs = fieldset.find_elements(By.CSS_SELECTOR, "input[data-param]")
    assert len(inputs) == 4  # header {{1}}, body {{1}} {{2}} {{3}}
    for field, value in zip(inputs, ("A-17", "Jonas", "A-17", "Monday"), strict=True):
        field.send_keys(value)
    preview = fieldset.find_element(By.CSS_SELECTOR, ".preview").text
    assert "Hi Jonas, your order A-17 ships on Monday." in preview
    shoot(ada, "template-picker")
    ada.find_element(By.ID, "send-template").click()
    sent = live.wait_for(lambda: [b for b in graph.sent if b["type"] == "template"], what="the template send")
    assert sent[-1]["to"] == "27910" and sent[-1]["template"]["components"] == [
        {"type": "header", "parameters": [{"type": "text", "text": "A-17"}]},
        {"type": "body", "parameters": [{"type": "text", "text": "Jonas"}, {"type": "text", "text": "A-17"},
                                        {"type": "text", "text": "Monday"}]}]
    wait(ada, lambda d: "Template order_update" in text_of(d, "thread"))

    # the contact panel: edit a field
    panel = ada.find_element(By.ID, "fields-form")
    panel.find_element(By.NAME, "new_key").send_keys("city")
    panel.find_element(By.NAME, "new_value").send_keys("Porto")
    ada.find_element(By.ID, "save-fields").click()
    wait(ada, lambda d: "Contact saved" in d.page_source)
    with app.app_context():
        assert db.session.get(Contact, cid).custom_fields == {"city": "Porto"}
    shoot(ada, "contact-panel")

    # flows: an invalid upload shows the CLI's messages
    ada.get(f"{live.url}/inbox/flows")
    ada.find_element(By.NAME, "filename").send_keys("promo.yaml")
    ada.find_element(By.NAME, "source").send_keys("name: promo\nsteps:\n  - {id: s, type: send, mesages: [x]}\n")
    ada.find_element(By.ID, "upload").click()
    error = wait(ada, lambda d: d.find_elements(By.CSS_SELECTOR, ".alert.error"))[0].text
    assert "promo.yaml:3:" in error
    shoot(ada, "flows")

    # a personal API token, shown once, works on /api as Ada
    ada.get(f"{live.url}/inbox/account")
    ada.find_element(By.CSS_SELECTOR, "#token-form input[name=label]").send_keys("reporting")
    ada.find_element(By.CSS_SELECTOR, "#token-form button").click()
    token = wait(ada, lambda d: d.find_elements(By.ID, "new-token"))[0].text
    import requests

    listed = requests.get(f"{live.url}/api/handovers", headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert listed.status_code == 200 and listed.json()["items"][0]["claimed_by"] == "Ada"
    shoot(ada, "account")
    ada.get(f"{live.url}/inbox/operators")
    assert "Ada" in text_of(ada, "operators")
    shoot(ada, "operators")
    ada.find_element(By.ID, "logout").click()
    wait(ada, lambda d: "/login" in d.current_url)
    ada.get(f"{live.url}/inbox/")
    assert "/login" in ada.current_url
