"""The flow simulator in a real browser: sign in, chat through the welcome flow pressing its
buttons and a list row, see the session panel, and check that nothing reached the Graph API.

The app runs in a thread with a real RQ worker process (tests/browser/conftest.py); the
simulator answers in the request, and the worker runs the jobs the intake woke (they find
nothing left, and would deliver to the sink too). Screenshots: docs/screenshots/simulator-*.png
(``bash scripts/screenshots.sh``).
"""

from __future__ import annotations

from rq import Queue
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import Select, WebDriverWait
from sqlalchemy import func, select

from crm.base.extensions import db
from crm.base.models import Contact, Message
from tests.inbox_support import PASSWORD, make_operator

WAIT = 20  # seconds


def wait(driver, check, timeout: float = WAIT):
    """Until ``check(driver)`` is true; the chat is redrawn by polling, so an element found a
    moment ago may be gone: that counts as not yet."""
    return WebDriverWait(driver, timeout, poll_frequency=0.1,
                         ignored_exceptions=(StaleElementReferenceException,)).until(lambda d: check(d))


def bot_texts(driver) -> list[str]:
    return [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#chat .wa.bot .body")]


def my_texts(driver) -> list[str]:
    return [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#chat .wa.me .body")]


def buttons(driver) -> list:
    """The reply buttons of the newest message that has any."""
    groups = driver.find_elements(By.CSS_SELECTOR, "#chat .wa.bot .buttons")
    return groups[-1].find_elements(By.CSS_SELECTOR, "button.reply-button") if groups else []


def press(driver, title: str) -> None:
    def found(d):
        for button in buttons(d):
            if button.text == title:
                return button
        return None
    count = len(my_texts(driver))
    wait(driver, found).click()
    wait(driver, lambda d: len(my_texts(d)) > count and my_texts(d)[-1] == title)


def path_steps(driver) -> list[str]:
    """The steps of the session's path, read in one script: the panel is redrawn by polling, and
    elements found one call earlier may be gone (a StaleElementReferenceException in CI)."""
    return driver.execute_script(
        "return Array.from(document.querySelectorAll('#path li:last-child .step'), e => e.dataset.step)")


def text_of(driver, element_id: str) -> str:
    """An element's text, read in one script (see path_steps)."""
    return driver.execute_script("return document.getElementById(arguments[0]).innerText.trim()", element_id)


def test_simulator_chat_through_welcome(live, browser, shoot):
    app, graph = live.app, live.graph
    make_operator(app, "Bo")
    driver = browser()
    driver.set_window_size(1280, 860)

    driver.get(f"{live.url}/simulator/")
    assert "/login" in driver.current_url  # the simulator asks for a sign-in first
    driver.find_element(By.ID, "name").send_keys("Bo")
    driver.find_element(By.ID, "password").send_keys(PASSWORD)
    driver.find_element(By.ID, "sign-in").click()
    wait(driver, lambda d: d.find_elements(By.ID, "flow-select"))
    assert driver.current_url.endswith("/simulator/")
    assert "Pick a flow" in driver.find_element(By.ID, "chat").text
    picker = Select(driver.find_element(By.ID, "flow-select"))
    assert picker.first_selected_option.get_attribute("value") == "welcome"  # the main menu
    assert {"welcome", "signup", "football", "handover", ""} <= {o.get_attribute("value") for o in picker.options}

    # the main menu: three reply buttons, drawn under the bubble as WhatsApp does
    driver.find_element(By.ID, "start").click()
    wait(driver, lambda d: [b.text for b in buttons(d)] == ["Football", "Sign up", "Talk to a person"])
    assert bot_texts(driver)[-1] == "Hello Simulator (Bo)! 👋 What would you like to do?"
    assert driver.find_element(By.ID, "session-step").text == "menu"
    wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#chat .wa.bot .meta"))
    shoot(driver, "simulator-menu")

    # Football: four options, so a list message; its button opens the rows
    press(driver, "Football")
    opener = wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#chat .wa.bot .list-open"))[-1]
    assert bot_texts(driver)[-1] == "Football ⚽ What would you like to see?"
    opener.click()
    wait(driver, lambda d: d.find_element(By.ID, "sheet").is_displayed())
    rows = driver.find_elements(By.CSS_SELECTOR, "#sheet-rows .list-row")
    assert [r.find_element(By.CSS_SELECTOR, ".title").text for r in rows][:2] == ["Fixtures", "Results"]
    shoot(driver, "simulator-list")
    rows[0].click()
    wait(driver, lambda d: not d.find_element(By.ID, "sheet").is_displayed())
    wait(driver, lambda d: my_texts(d)[-1:] == ["Fixtures"])
    wait(driver, lambda d: "fixtures" in path_steps(d))  # the real football.fixtures action ran

    # back to the menu by keyword, then sign up: the panel shows the variables and the path
    box = driver.find_element(By.ID, "sim-text")
    box.send_keys("menu", Keys.ENTER)
    wait(driver, lambda d: my_texts(d)[-1:] == ["menu"] and [b.text for b in buttons(d)][:1] == ["Football"])
    press(driver, "Sign up")
    wait(driver, lambda d: bot_texts(d)[-1:] == ["What is your full name?"])
    box = driver.find_element(By.ID, "sim-text")
    box.send_keys("Ana Lima", Keys.ENTER)
    wait(driver, lambda d: bot_texts(d)[-1:] == ["Thanks Ana Lima. What is your email address?"])
    assert text_of(driver, "session-flow") == "signup"
    assert text_of(driver, "session-step") == "ask_email"
    assert '"name": "Ana Lima"' in text_of(driver, "vars")
    assert path_steps(driver)[-4:] == ["menu", "to_signup", "ask_name", "ask_email"]
    assert "in " in text_of(driver, "session-expires")  # counting down to the idle expiry
    shoot(driver, "simulator-signup")

    # nothing reached the Graph API: not the replies, not a read receipt, not from the worker
    redis = app.extensions["redis"]
    live.wait_for(lambda: Queue("high", connection=redis).count == 0 and not redis.keys("crm:queued:*"),
                  what="the woken contact tasks to finish")
    with app.app_context():
        contact = db.session.execute(select(Contact).where(Contact.is_test.is_(True))).scalar_one()
        assert contact.wa_id.startswith("sim-")
        pending = db.session.execute(select(func.count()).select_from(Message).where(
            Message.contact_id == contact.id, Message.direction == "out", Message.status != "sent")).scalar_one()
        assert pending == 0
    assert graph.requests == []
