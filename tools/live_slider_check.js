// Manual check that a chapter's sliders are live in JupyterLab (not run by CI: it needs a browser
// driver). It runs every cell of a notebook in a real JupyterLab, moves the first slider to its
// last value with the keyboard, and reports whether the figure's image changed.
//
//   npm install playwright-core            # once, in any scratch folder (uses /usr/bin/chromium)
//   .venv/bin/jupyter lab --no-browser --port 8890 --ServerApp.token='' --allow-root &
//   NODE_PATH=<scratch>/node_modules node tools/live_slider_check.js book/algorithm.ipynb
const { chromium } = require('playwright-core');
(async () => {
  const browser = await chromium.launch({ executablePath: '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync'] });
  const page = await browser.newPage({ viewport: { width: 1300, height: 900 } });
  const notebook = process.argv[2] || 'book/algorithm.ipynb';
  await page.goto(`http://localhost:8890/lab/tree/${notebook}`, { waitUntil: 'domcontentloaded' });
  await page.waitForSelector('.jp-Notebook', { timeout: 60000 });
  await page.waitForTimeout(4000);
  // Run all cells via the command palette API
  await page.keyboard.press('Escape');
  await page.evaluate(() => window.jupyterapp && window.jupyterapp.commands.execute('notebook:run-all-cells'));
  // fallback: menu
  await page.waitForTimeout(1000);
  const hasApp = await page.evaluate(() => !!window.jupyterapp);
  if (!hasApp) {
    await page.click('text=Run', { timeout: 10000 });
    await page.click('text=Run All Cells', { timeout: 10000 });
  }
  await page.waitForSelector('.widget-slider, .jupyter-widgets .widget-hslider, .widget-hslider', { timeout: 120000 });
  await page.waitForTimeout(5000);
  const slider = page.locator('.widget-hslider').first();
  await slider.scrollIntoViewIfNeeded();
  const box = await slider.boundingBox();
  const imgs = page.locator('.widget-output img');
  const before = await imgs.first().getAttribute('src');
  // move the first slider (width) to the right end with the keyboard
  const handle = page.locator('.widget-hslider .noUi-handle').first();
  await handle.focus();
  await page.keyboard.press('End');
  await page.waitForTimeout(6000);
  const after = await imgs.first().getAttribute('src');
  const label = await page.locator('.widget-readout').first().innerText();
  console.log(JSON.stringify({ sliders: await page.locator('.widget-hslider').count(), readout: label,
     imageChanged: before !== after, beforeLen: before ? before.length : 0, afterLen: after ? after.length : 0 }));
  await browser.close();
})().catch(e => { console.error(e); process.exit(1); });
