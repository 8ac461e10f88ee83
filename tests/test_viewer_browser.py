"""The viewer in a real browser: headless Chromium loads the page, shows the GUI and the splats, and the
browser's camera, pause checkbox and save button reach the trainer side.

Needs the Debian packages ``chromium`` and ``chromium-driver`` (``.ci/install-browser.sh``) and selenium;
skips with the reason when any is missing. Set ``SPLATVLM_SCREENSHOT_DIR`` to keep the screenshot.
"""

from __future__ import annotations

import math
import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import CHROMEDRIVER, chromium_options, require_chromium, wait_for  # noqa: E402
from splatvlm.gaussians.cameras import orbit_cameras
from splatvlm.gaussians.scene import SceneConfig, init_ball, num_gaussians

require_chromium()
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium not installed (pip install selenium)")
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402

from splatvlm.gaussians.ply import load_ply, save_ply  # noqa: E402
from splatvlm.viewer.server import Viewer, ViewerConfig, make_render_fn  # noqa: E402

LABELS = ("Step", "#Gaussians", "Loss", "p(Yes)", "Step time", "Pause", "Save .ply now", "Live preview")


@pytest.fixture
def driver(tmp_path):
    opts = chromium_options(webdriver, tmp_path / "chromium-profile")
    service = webdriver.ChromeService(executable_path=CHROMEDRIVER)
    try:
        d = webdriver.Chrome(service=service, options=opts)
    except Exception as e:  # a broken install must not look like a viewer bug
        pytest.skip(f"could not start headless Chromium: {type(e).__name__}: {str(e).splitlines()[0]}")
    d.set_page_load_timeout(30)
    yield d
    d.quit()


def label_input(driver, label: str):
    """The input a viser GUI label belongs to (viser links them with <label for=...>)."""
    lab = driver.find_element(By.XPATH, f"//label[normalize-space(text())='{label}']")
    return driver.find_element(By.ID, lab.get_attribute("for"))


def test_viewer_in_headless_chromium(driver, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    params = init_ball(
        SceneConfig(num_points=300, color_noise=0.5), generator=torch.Generator().manual_seed(0)
    )
    inner = make_render_fn(params, "cpu")  # the real training renderer (torch backend on CPU)
    calls: list[tuple[torch.Tensor, torch.Tensor, int, int]] = []

    def render_fn(viewmat, K, width, height):
        assert viewer.lock.locked(), "previews must render under the trainer's lock"
        calls.append((viewmat, K, width, height))
        return inner(viewmat, K, width, height)

    cfg = ViewerConfig(enabled=True, port=0, refresh_every=10, preview_resolution=64)
    viewer = Viewer(cfg, render_fn, run_dir, lambda path: save_ply(params, path))
    try:
        for step in range(41):
            viewer.update(
                params, step, {"loss": 2.0 / (step + 1), "loss_sds": 1.0, "p_yes": 0.5 + step / 100}
            )
        viewer.update(params, 41, {"loss": 0.04, "p_yes": 0.9}, force=True)

        # 1. The page loads and viser's GUI appears with our labels and numbers.
        t0 = time.monotonic()
        driver.get(f"http://127.0.0.1:{viewer.port}/")
        wait_for(lambda: "Save .ply now" in driver.page_source, 45, "the GUI")
        src = driver.page_source
        missing = [label for label in LABELS if f">{label}<" not in src]
        assert not missing, f"GUI labels missing from the DOM: {missing}"
        assert "Preview (training renderer)" in src
        wait_for(lambda: driver.find_elements(By.XPATH, "//input[@value='41']"), 10, "step 41 in the GUI")
        assert driver.find_elements(By.XPATH, f"//input[@value='{num_gaussians(params)}']")
        assert driver.find_elements(By.XPATH, "//input[@value='0.900']")  # p(Yes)
        assert len(driver.find_elements(By.CSS_SELECTOR, ".uplot")) == 3  # loss, loss_sds, p_yes curves
        print(f"GUI up after {time.monotonic() - t0:.1f} s")

        # 2. The first preview used the browser's initial camera, converted to our convention:
        #    the turntable pose (elevation 15, azimuth 0, fov 40) the viewer asks viser to start from.
        _, _, width, height = wait_for(lambda: calls and calls[-1], 20, "a preview render")
        expect = orbit_cameras(
            torch.tensor([15.0]), torch.tensor([0.0]), torch.tensor([0.9 / math.tan(math.radians(20))]),
            torch.tensor([40.0]), width, height,
        )  # fmt: skip
        # viser sends its built-in default camera first, then the initial camera we set.
        viewmat, K, width, height = wait_for(
            lambda: next((c for c in calls if torch.allclose(c[0], expect.viewmats[0], atol=2e-3)), None),
            20,
            f"a preview from the initial camera; got centers {[torch.linalg.inv(c[0])[:3, 3].tolist() for c in calls]}",
        )
        assert height == 64 and width >= 64  # the browser viewport is wider than tall
        torch.testing.assert_close(K, expect.Ks[0], atol=1e-3, rtol=1e-4)

        # 3. Dragging in the 3D view orbits the camera; the preview follows it.
        canvas = driver.find_element(By.TAG_NAME, "canvas")
        n_before = len(calls)
        ActionChains(driver).move_to_element_with_offset(canvas, -200, 0).click_and_hold().move_by_offset(
            60, 0
        ).move_by_offset(60, 10).release().perform()
        wait_for(
            lambda: len(calls) > n_before and not torch.allclose(calls[-1][0], viewmat, atol=1e-3),
            20,
            "a moved preview",
        )
        moved = calls[-1][0].double()
        center = torch.linalg.inv(moved)[:3, 3]
        assert not torch.allclose(moved, viewmat.double(), atol=1e-3)
        # Still an orbit around the origin: same distance, origin straight ahead (+z, centered).
        assert center.norm().item() == pytest.approx(0.9 / math.tan(math.radians(20)), rel=0.02)
        origin_cam = moved[:3, 3]
        assert (
            origin_cam[2] > 0
            and abs(origin_cam[0]) < 1e-2 * origin_cam[2]
            and abs(origin_cam[1]) < 1e-2 * origin_cam[2]
        )

        # 4. The pause checkbox blocks the trainer; unticking releases it.
        label_input(driver, "Pause").click()
        wait_for(lambda: viewer.paused, 10, "pause to reach the server")
        released = threading.Event()
        threading.Thread(target=lambda: (viewer.wait_if_paused(), released.set()), daemon=True).start()
        assert not released.wait(0.5)
        label_input(driver, "Pause").click()
        assert released.wait(10), "resume did not reach the server"

        # 5. "Save .ply now" writes a loadable snapshot inside the run folder, and nothing else.
        driver.find_element(By.XPATH, "//button[.//span[normalize-space(text())='Save .ply now']]").click()
        snapshot = run_dir / "snapshot_41.ply"
        wait_for(snapshot.exists, 10, "the snapshot")
        assert num_gaussians(load_ply(snapshot)) == num_gaussians(params)
        assert sorted(p.name for p in run_dir.iterdir()) == ["snapshot_41.ply"]

        # 6. A screenshot is not blank: the splats are drawn in the 3D view (left of the GUI panel).
        time.sleep(1.0)
        shot = tmp_path / "viewer.png"
        assert driver.save_screenshot(str(shot))
        keep = os.environ.get("SPLATVLM_SCREENSHOT_DIR")
        if keep:
            Path(keep).mkdir(parents=True, exist_ok=True)
            shutil.copy(shot, Path(keep) / "viewer_browser_test.png")
        from PIL import Image

        img = np.asarray(Image.open(shot).convert("RGB")).astype(np.float64)
        assert img.std() > 10, f"screenshot looks blank (std {img.std():.1f})"
        view = img[100 : img.shape[0] - 100, 300:800]  # the scene area, away from panel and notifications
        assert view.std() > 5, f"3D view looks empty (std {view.std():.1f})"
        print(f"screenshot {shot} std {img.std():.1f}, scene area std {view.std():.1f}")
    finally:
        viewer.close()
