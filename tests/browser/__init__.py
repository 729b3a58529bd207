"""Browser tests: the inbox in Debian's headless Chromium, driven by Selenium."""
