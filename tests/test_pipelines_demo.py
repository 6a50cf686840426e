"""pipelines.demo: the page's work as plain functions (a mosaic of samples; an uploaded picture's tokens decoded
and completed), and the page itself driven in a real headless browser (Debian's chromium and chromium-driver,
which .ci/run installs, through selenium): a click on Sample brings an image back."""

import shutil
import socket

import numpy as np
import pytest
from PIL import Image

from conftest import TINY_PRIOR
from generation import ImageGenerator
from pipelines import demo, fit_prior


@pytest.fixture
def generator(prior_run):
    return ImageGenerator.load(prior_run)


def test_the_page_work_draws_mosaics_of_samples_and_of_an_uploaded_pictures_tokens(generator):
    choices = demo.label_choices(generator)
    assert choices[0] == demo.ANY_CLASS and choices[-1] == demo.NO_LABEL_CHOICE
    assert choices[1:-1] == list(generator.run.class_names)
    four = demo.sample_mosaic(generator, choices[1], "constant", 1, 2.0, 0, 3, 4)
    assert four.dtype == np.uint8 and four.ndim == 3 and four.shape[2] == 3 and four.std() > 0
    # The same request is the same mosaic; another seed another one; a class by name as `sample --label` takes it.
    assert np.array_equal(four, demo.sample_mosaic(generator, choices[1], "constant", 1, 2.0, 0, 3, 4))
    assert not np.array_equal(four, demo.sample_mosaic(generator, choices[1], "constant", 1, 2.0, 0, 4, 4))
    assert demo.sample_mosaic(generator, demo.NO_LABEL_CHOICE, "constant", 1, 2.0, 0, 0, 1).shape[:2] < four.shape[:2]
    # The training mix is guided by the page's scale, as `sample` guides it, and along the page's schedule.
    assert not np.array_equal(demo.sample_mosaic(generator, demo.ANY_CLASS, "constant", 1, 1.0, 0, 0, 4),
                              demo.sample_mosaic(generator, demo.ANY_CLASS, "constant", 1, 4.0, 0, 0, 4))
    ramp = demo.sample_mosaic(generator, demo.ANY_CLASS, "linear", 1, 4.0, 0, 0, 4)
    assert not np.array_equal(ramp, demo.sample_mosaic(generator, demo.ANY_CLASS, "constant", 1, 4.0, 0, 0, 4))
    assert not np.array_equal(ramp, demo.sample_mosaic(generator, demo.ANY_CLASS, "cosine", 1, 4.0, 0, 0, 4))
    # An unguided first part of the grid is the library's guidance_from, as a fraction.
    assert np.array_equal(demo.sample_mosaic(generator, demo.ANY_CLASS, "constant", 1, 4.0, 0.5, 0, 4),
                          demo.mosaic_array(generator.sample(4, seed=0, guidance_scale=4.0, guidance_from=0.5)[0]))
    assert not np.array_equal(demo.sample_mosaic(generator, demo.ANY_CLASS, "constant", 1, 4.0, 0.5, 0, 4),
                              demo.sample_mosaic(generator, demo.ANY_CLASS, "constant", 1, 4.0, 0, 0, 4))
    # The page opens on the defaults of `sample`.
    schedule, start, end, unguided = demo.default_guidance()
    assert np.array_equal(demo.sample_mosaic(generator, demo.ANY_CLASS, schedule, start, end, unguided, 0, 4),
                          demo.mosaic_array(generator.sample(4, seed=0)[0]))

    # A picture of another size and mode: fitted to the tokenizer's 28x28 grey, encoded, decoded, completed.
    picture = Image.fromarray(np.random.default_rng(0).integers(0, 256, (30, 45, 3), dtype=np.uint8), "RGB")
    both, completions = demo.token_views(generator, picture, demo.ANY_CLASS, "cosine", 1, 2.5, 0, 0, 3, 6)
    assert both.dtype == completions.dtype == np.uint8
    assert both.shape[1] > both.shape[0]  # the picture and its reconstruction side by side
    with pytest.raises(ValueError, match="upload an image first"):
        demo.token_views(generator, None, demo.ANY_CLASS, "cosine", 1, 2.5, 0, 0, 3, 6)


def test_an_unconditional_prior_offers_no_class_and_ignores_the_guidance_scale(tokenizer_run, tmp_path):
    fit_prior.main([*TINY_PRIOR, "--tokenizer", tokenizer_run, "--output-root", tmp_path / "runs", "--run-name", "u",
                    "--condition", "none"])
    unconditional = ImageGenerator.load(tmp_path / "runs" / "prior" / "u")
    assert demo.label_choices(unconditional) == [demo.ANY_CLASS]
    assert np.array_equal(demo.sample_mosaic(unconditional, demo.ANY_CLASS, "linear", 1, 3.0, 0, 0, 2),
                          demo.sample_mosaic(unconditional, demo.ANY_CLASS, "constant", 1, 1.0, 0, 0, 2))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_page_answers_a_click_in_a_real_browser(generator):
    pytest.importorskip("gradio")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser_path, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not (browser_path and driver_path):
        pytest.skip("Debian's chromium and chromium-driver are not installed (.ci/run installs them)")
    page = demo.build_demo(generator, max_count=8)
    port = free_port()
    demo.launch(page, "127.0.0.1", port, wait=False)
    options = webdriver.ChromeOptions()
    options.binary_location = browser_path
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1200,1000"):
        options.add_argument(flag)
    browser = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver_path))
    try:
        browser.get(f"http://127.0.0.1:{port}/")
        wait = WebDriverWait(browser, 60)
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#sample-button"))
        assert not browser.find_elements(By.CSS_SELECTOR, "#samples img")  # nothing before the click
        browser.find_element(By.CSS_SELECTOR, "#sample-button").click()
        loaded = "return arguments[0].complete && arguments[0].naturalWidth"  # decoded by the browser
        image = wait.until(lambda b: next((img for img in b.find_elements(By.CSS_SELECTOR, "#samples img")
                                           if b.execute_script(loaded, img)), None))
        # As wide as the mosaic of the page's defaults (any class, seed 0, 8 images).
        width = browser.execute_script("return arguments[0].naturalWidth", image)
        expected = demo.sample_mosaic(generator, demo.ANY_CLASS, *demo.default_guidance(), 0, 8).shape[1]
        assert width == expected, (width, expected)
    finally:
        browser.quit()
        page.close()
