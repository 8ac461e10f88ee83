"""The studio in a real browser: headless Chromium types a prompt, presses Generate, watches a 5-step demo run to
its end, and downloads the .ply from the gallery, byte for byte the run folder's.

Needs the Debian packages ``chromium`` and ``chromium-driver`` (``.ci/install-browser.sh``) and selenium;
skips with the reason when any is missing. Set ``SPLATVLM_SCREENSHOT_DIR`` to keep the screenshot (studio.png).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from helpers import CHROMEDRIVER, chromium_options, require_chromium, wait_for  # noqa: E402

require_chromium()
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium not installed (pip install selenium)")
from selenium.webdriver.common.by import By  # noqa: E402

from splatvlm.studio.app import Studio, StudioConfig  # noqa: E402
from splatvlm.studio.presets import PresetInfo  # noqa: E402


@pytest.fixture
def downloads(tmp_path):
    path = tmp_path / "downloads"
    path.mkdir()
    return path


@pytest.fixture
def driver(tmp_path, downloads):
    opts = chromium_options(webdriver, tmp_path / "chromium-profile")
    opts.add_experimental_option(
        "prefs", {"download.default_directory": str(downloads), "download.prompt_for_download": False}
    )
    service = webdriver.ChromeService(executable_path=CHROMEDRIVER)
    try:
        d = webdriver.Chrome(service=service, options=opts)
    except Exception as e:  # a broken install must not look like a studio bug
        pytest.skip(f"could not start headless Chromium: {type(e).__name__}: {str(e).splitlines()[0]}")
    d.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    d.set_page_load_timeout(30)
    yield d
    d.quit()


def label_input(driver, label: str):
    """The input a viser GUI label belongs to: by its <label for=...> (checkboxes), else the next input (text)."""
    lab = driver.find_element(By.XPATH, f"//label[normalize-space(text())='{label}']")
    linked = driver.find_elements(By.ID, lab.get_attribute("for") or "-")
    return linked[0] if linked else lab.find_element(By.XPATH, "following::input[1]")


def click_button(driver, text: str) -> None:
    driver.find_element(By.XPATH, f"//button[.//span[normalize-space(text())='{text}']]").click()


def click_tab(driver, text: str) -> None:
    driver.find_element(By.XPATH, f"//*[@role='tab'][normalize-space(.)='{text}']").click()


def test_studio_prompt_to_downloaded_ply(driver, downloads, tmp_path):
    out_dir = tmp_path / "runs"
    demo = [PresetInfo("demo", "tiny random models", "not measured", True)]
    studio = Studio(StudioConfig(out_dir=out_dir, port=0, steps=5), presets=demo)
    try:
        # 1. The page: the Make tab, with the preset table.
        driver.get(studio.url)
        wait_for(lambda: "Generate" in driver.page_source, 45, "the studio's GUI")
        assert "not measured" in driver.page_source

        # 2. A prompt typed and queued through the page; its run folder appears and runs.
        label_input(driver, "Prompt").send_keys("a red apple")
        wait_for(lambda: studio._gui_prompt.value == "a red apple", 10, "the typed prompt at the server")
        click_button(driver, "Generate")
        job_id = wait_for(
            lambda: studio.runner.current and studio.runner.current[0].id, 60, "the job to start"
        )
        assert job_id == "000-a-red-apple"
        run_dir = out_dir / job_id

        # 3. Watch: the live numbers reach the page, and the run goes to its end.
        click_tab(driver, "Watch")
        for close in driver.find_elements(By.CSS_SELECTOR, "button.mantine-Notification-closeButton"):
            with contextlib.suppress(Exception):  # viser's notices (software WebGL) would cover the view
                close.click()
        wait_for((run_dir / "summary.json").is_file, 600, "the 5-step demo run to finish")
        wait_for(
            lambda: driver.find_elements(By.XPATH, "//input[@value='5 / 5']"), 30, "step 5 / 5 in the page"
        )
        wait_for(lambda: "Nothing is running" in driver.page_source, 30, "the Watch tab to go idle")
        assert "finished" in driver.page_source  # what ran last stays on show
        assert studio.queue.jobs == []
        assert driver.find_elements(By.CSS_SELECTOR, ".uplot"), "no loss curves drawn"
        time.sleep(1.5)  # the last splat upload
        shot = tmp_path / "studio.png"
        assert driver.save_screenshot(str(shot))

        # 4. Gallery: the finished run is selected; its .ply comes down byte for byte.
        click_tab(driver, "Gallery")
        wait_for(lambda: "000-a-red-apple: a red apple" in driver.page_source, 30, "the run in the gallery")
        assert 'src="data:image/gif;base64,' in driver.page_source  # the turntable
        click_button(driver, "Download .ply")
        got = wait_for(
            lambda: [p for p in downloads.iterdir() if p.suffix == ".ply"], 60, "the downloaded .ply"
        )
        assert [p.name for p in got] == ["000-a-red-apple.ply"]
        expected = (run_dir / "scene.ply").read_bytes()
        wait_for(lambda: got[0].stat().st_size == len(expected), 30, "the whole download")
        assert got[0].read_bytes() == expected
        gallery_shot = tmp_path / "studio_gallery.png"
        driver.save_screenshot(str(gallery_shot))

        # 5. The screenshot shows the GUI and splats (not a blank page).
        from PIL import Image

        img = np.asarray(Image.open(shot).convert("RGB")).astype(np.float64)
        assert img.std() > 10, f"screenshot looks blank (std {img.std():.1f})"
        keep = os.environ.get("SPLATVLM_SCREENSHOT_DIR")
        if keep:
            Path(keep).mkdir(parents=True, exist_ok=True)
            shutil.copy(shot, Path(keep) / "studio.png")
            shutil.copy(gallery_shot, Path(keep) / "studio_gallery.png")
    finally:
        studio.close()
