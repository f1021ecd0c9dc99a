// Open chapters in a running JupyterLab, in headless Chromium, and check what a reader sees.
//
//   node tools/lab_check.js PORT NOTEBOOK [NOTEBOOK ...] [--run] [--shots DIR]
//
// For each notebook, before any cell runs: the Markdown cells are rendered (no raw MyST role such
// as {term}`...`, no "(label)=" line, no ":::{" or "```{" fence left as text) and every image in
// the notebook has loaded (no broken-image icon); the figures count is printed. With --run, it
// then runs all cells, moves the first live slider to its first value and checks that the figure
// was redrawn. Prints one JSON line per notebook; exits 1 if any check fails. Needs playwright-core
// (NODE_PATH) and Chromium at /usr/bin/chromium; `python3 tasks.py lab-check` sets both up.
const { chromium } = require('playwright-core');

const RAW_MYST = /\{(term|doc|ref|numref|glue:text|glue:any|func|class|mod|meth|attr|eq)\}`|^\([\w-]+\)=\s*$|^:::\{|^```\{/m;

async function check(page, port, notebook, run, shots) {
  const result = { notebook };
  await page.goto(`http://localhost:${port}/lab/tree/${notebook}?reset`, { waitUntil: 'domcontentloaded' });
  await page.waitForSelector('.jp-Notebook .jp-Cell', { timeout: 120000 });
  // every Markdown cell rendered (windowing is off, see tasks.py), then the images loaded
  await page.waitForFunction(() => {
    const cells = document.querySelectorAll('.jp-Notebook .jp-MarkdownCell');
    return cells.length > 0 && [...cells].every(c => c.querySelector('.jp-RenderedMarkdown, .jp-RenderedMySTMarkdown, .myst'));
  }, null, { timeout: 120000 });
  await page.waitForTimeout(3000);
  const seen = await page.evaluate((pattern) => {
    const raw = new RegExp(pattern.source, pattern.flags);
    const markdown = [...document.querySelectorAll('.jp-Notebook .jp-MarkdownCell')]
      .map(c => (c.querySelector('.jp-RenderedMarkdown, .jp-RenderedMySTMarkdown, .myst') || c).innerText);
    const rawHits = markdown.flatMap(t => t.split('\n').filter(line => raw.test(line))).slice(0, 5);
    const images = [...document.querySelectorAll('.jp-Notebook .jp-OutputArea img')];
    return { markdownCells: markdown.length, rawMyst: rawHits,
             images: images.length, broken: images.filter(i => !i.complete || i.naturalWidth === 0).length,
             players: document.querySelectorAll('.jp-Notebook .invlib-player').length,
             widgets: document.querySelectorAll('.jp-Notebook .widget-hslider').length };
  }, { source: RAW_MYST.source, flags: RAW_MYST.flags });
  Object.assign(result, seen);
  result.ok = seen.rawMyst.length === 0 && seen.broken === 0 && seen.markdownCells > 0;
  if (shots) await page.screenshot({ path: `${shots}/${notebook.replace(/\W+/g, '_')}_before_run.png` });
  if (run) {
    await page.evaluate(() => window.jupyterapp.commands.execute('notebook:run-all-cells'));
    await page.waitForSelector('.widget-hslider', { timeout: 300000 });
    await page.waitForFunction(() => !document.querySelector('.jp-InputArea-prompt') ||
      ![...document.querySelectorAll('.jp-InputArea-prompt')].some(p => p.innerText.includes('*')),
      null, { timeout: 300000, polling: 1000 });
    await page.waitForTimeout(3000);
    const slider = page.locator('.widget-hslider').first();
    await slider.scrollIntoViewIfNeeded();
    const box = slider.locator('xpath=ancestor::div[contains(@class,"widget-vbox")][1]').first();
    const image = box.locator('.widget-output img').first();
    const before = await image.getAttribute('src');
    await slider.locator('.noUi-handle').first().focus();
    await page.keyboard.press('Home');
    await page.waitForFunction(([b]) => {
      const img = document.querySelector('.widget-vbox .widget-output img');
      return img && img.getAttribute('src') !== b;
    }, [before], { timeout: 60000 }).catch(() => {});
    const after = await image.getAttribute('src');
    result.redrawn = !!before && before !== after;
    result.ok = result.ok && result.redrawn;
    if (shots) {
      await slider.scrollIntoViewIfNeeded();
      await page.screenshot({ path: `${shots}/${notebook.replace(/\W+/g, '_')}_after_slider.png` });
    }
  }
  return result;
}

(async () => {
  const args = process.argv.slice(2);
  let run = false, shots = null;
  const positional = [];
  for (let i = 0; i < args.length; i++) {
    if (args[i] === '--run') run = true;
    else if (args[i] === '--shots') shots = args[++i];
    else positional.push(args[i]);
  }
  const [port, ...notebooks] = positional;
  const browser = await chromium.launch({ executablePath: '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
           '--disable-component-update', '--disable-sync'] });
  let failed = false;
  for (const notebook of notebooks) {
    const context = await browser.newContext({ viewport: { width: 1300, height: 1000 } });
    const page = await context.newPage();
    let result;
    try {
      result = await check(page, port, notebook, run, shots);
    } catch (e) {
      result = { notebook, ok: false, error: String(e).split('\n')[0] };
    }
    console.log(JSON.stringify(result));
    failed = failed || !result.ok;
    await context.close();
  }
  await browser.close();
  process.exit(failed ? 1 : 0);
})().catch(e => { console.error(e); process.exit(1); });
