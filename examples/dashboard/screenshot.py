"""Screenshot a dashboard page in headless Chromium, after it has had time to draw:
    python examples/dashboard/screenshot.py http://127.0.0.1:8765/sweep/<id> sweep.png [seconds]
Debian's chromium and chromium-driver, through Selenium; nothing is downloaded."""

import os
import sys
import time

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

url, out = sys.argv[1], sys.argv[2]
wait = float(sys.argv[3]) if len(sys.argv) > 3 else 15.0
os.environ["SE_OFFLINE"] = "true"
options = webdriver.ChromeOptions()
options.binary_location = "/usr/bin/chromium"
for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1300,2400"):
    options.add_argument(flag)
driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
try:
    driver.get(url)
    time.sleep(wait)
    driver.save_screenshot(out)
finally:
    driver.quit()
