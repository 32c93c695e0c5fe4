// The attnprof tab. TensorBoard loads this module in an iframe whose <base> is /data/plugin/attnprof/ and calls
// render(): a run selector, the run's dashboard (its own iframe) and the call-site and call tables of its
// attnprof.json (analysed on demand by the plugin when the folder has none). Plain DOM, no libraries, nothing fetched from outside TensorBoard: it works offline.

const STYLE = `
  body { margin: 0; font: 13px system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #212121; }
  #attnprof-root { padding: 12px 16px; }
  header { display: flex; align-items: center; gap: 12px; margin-bottom: 10px; flex-wrap: wrap; }
  header h1 { font-size: 15px; margin: 0; }
  header .meta { color: #616161; }
  select { font: inherit; padding: 2px 4px; }
  #attnprof-dashboard { width: 100%; height: 70vh; border: 1px solid #e0e0e0; border-radius: 4px; }
  .scroll { overflow-x: auto; }
  h2 { font-size: 14px; margin: 18px 0 6px; }
  table { border-collapse: collapse; width: 100%; }
  th, td { padding: 3px 8px; border-bottom: 1px solid #eeeeee; text-align: right; white-space: nowrap; }
  th { background: #fafafa; position: sticky; top: 0; font-weight: 600; }
  td.text, th.text { text-align: left; }
  td .share { color: #9e9e9e; margin-left: 4px; }
  td .share.big { color: #212121; font-weight: 600; }
  ul.copies { margin: 0; padding-left: 16px; text-align: left; }
  .note { color: #8d6e63; }
  .error { color: #c62828; }
`;

// A share of the window at least this large is shown in bold, as the console table does.
const BIG_SHARE = 0.4;

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  for (const child of children.flat()) node.append(child instanceof Node ? child : String(child));
  return node;
}

async function getJSON(url) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
  return response.json();
}

function us(v) {
  if (v === null || v === undefined) return '—';
  return v < 1000 ? v.toFixed(1) : Math.round(v).toLocaleString('en-US');
}

// µs and its share of the window; "n/a" where the part does not apply (launch on CPU runs).
function part(v, window) {
  if (v === null || v === undefined) return el('td', {}, el('span', {class: 'share'}, 'n/a'));
  const share = window > 0 ? v / window : 0;
  return el('td', {}, us(v), el('span', {class: share >= BIG_SHARE ? 'share big' : 'share'},
                               `${Math.round(100 * share)}%`));
}

function shape(row) {
  const shapes = row.shapes || {};
  const main = shapes.q || shapes.qkv || Object.values(shapes)[0];
  return [main ? main.join('×') : '?', row.dtype, row.layout].filter(Boolean).join(' ');
}

function bytes(n) {
  return n >= 1e5 ? `${(n / 1e6).toFixed(1)} MB` : `${(n / 1e3).toFixed(1)} kB`;
}

function copyList(copies, perCall) {
  if (!copies || !copies.length) return '';
  return el('ul', {class: 'copies'}, copies.map((c) => el('li', {},
    `${c.site || '?'} ${c.op} ${bytes(c.bytes)} ${us(c.dur_us)} µs` +
    (perCall ? '' : ` (${c.count}×)`) + (c.position ? ` ${c.position}` : ''))));
}

function table(id, columns, rows) {
  return el('div', {class: 'scroll'}, el('table', {id},
    el('thead', {}, el('tr', {}, columns.map(([title, cls]) => el('th', cls ? {class: cls} : {}, title)))),
    el('tbody', {}, rows)));
}

function sitesTable(report) {
  const onCpu = report.sites.every((s) => s.launch_us === null);
  const columns = [['site', 'text'], ['op → backend', 'text'], ['phase', 'text'], ['shape', 'text'], ['calls'],
    ['true µs'], ['prof µs'], ['window µs'], ['compute'], ['copy'], [onCpu ? 'launch' : 'launch*'], ['other'],
    ['layout copies (per call)', 'text']];
  const rows = report.sites.map((s) => el('tr', {},
    el('td', {class: 'text'}, s.site), el('td', {class: 'text'}, `${s.op} → ${s.backend}`),
    el('td', {class: 'text'}, s.phase), el('td', {class: 'text'}, shape(s)), el('td', {}, s.calls),
    el('td', {}, us(s.true_us)),
    el('td', {}, us(s.profiled_us) + (s.inflation ? ` ×${s.inflation.toFixed(2)}` : '')),
    el('td', {}, us(s.window_us)), part(s.compute_us, s.window_us), part(s.copy_us, s.window_us),
    part(s.launch_true_us, s.window_us), part(s.other_us, s.window_us),
    el('td', {class: 'text'}, copyList(s.copies, false))));
  const out = [el('h2', {}, 'Call sites (µs per call)'), table('attnprof-sites', columns, rows)];
  out.push(el('p', {class: 'meta'}, onCpu
    ? 'CPU run: no device to wait for, so launch is n/a; time between ops is in other.'
    : '* launch less the profiler\'s own inflation (prof µs / true µs); true µs from CUDA events outside ' +
      'the profiler, the split from the trace.'));
  return out;
}

function callsTable(report) {
  const columns = [['id'], ['step'], ['phase', 'text'], ['site', 'text'], ['op → backend', 'text'],
    ['window µs'], ['compute'], ['copy'], ['launch'], ['other'], ['interleaved µs'], ['layout copies', 'text']];
  const rows = report.calls.map((c) => el('tr', {},
    el('td', {}, c.id), el('td', {}, c.step ?? '—'), el('td', {class: 'text'}, c.phase),
    el('td', {class: 'text'}, c.site), el('td', {class: 'text'}, `${c.op} → ${c.backend}`),
    el('td', {}, us(c.window_us)), part(c.compute_us, c.window_us), part(c.copy_us, c.window_us),
    part(c.launch_us, c.window_us), part(c.other_us, c.window_us), el('td', {}, us(c.interleaved_us)),
    el('td', {class: 'text'}, copyList(c.copies, true))));
  return [el('h2', {}, `Calls (${report.calls.length})`), table('attnprof-calls', columns, rows)];
}

function reportView(report) {
  const out = [el('p', {class: 'meta'},
    `${report.source} · ${report.device}` + (report.torch_version ? ` · torch ${report.torch_version}` : ''))];
  if (report.sites && report.sites.length) out.push(...sitesTable(report), ...callsTable(report));
  for (const note of report.notes || []) out.push(el('p', {class: 'note'}, `note: ${note}`));
  return out;
}

export async function render() {
  document.head.append(el('style', {}, STYLE));
  const root = el('div', {id: 'attnprof-root'});
  document.body.append(root);
  let runs;
  try {
    runs = await getJSON('runs');
  } catch (error) {
    root.append(el('p', {class: 'error'}, `attnprof: cannot list runs (${error.message})`));
    return;
  }
  if (!runs.length) {
    root.append(el('p', {}, 'No run under the logdir holds a torch.profiler trace or a compare.json yet: run ',
                   el('code', {}, 'attnprof trace your_script.py'), ' or ', el('code', {}, 'attnprof compare'), '.'));
    return;
  }
  const select = el('select', {id: 'attnprof-run', 'aria-label': 'run'},
                    runs.map((r) => el('option', {value: r.run}, r.run)));
  const frame = el('iframe', {id: 'attnprof-dashboard', title: 'attnprof dashboard'});
  const tables = el('div', {id: 'attnprof-tables'});
  root.append(el('header', {}, el('h1', {}, 'attnprof'), el('label', {}, 'run ', select)), frame, tables);

  let shown = 0;  // a slow answer for a run no longer selected must not overwrite the current one
  async function show(run) {
    const ticket = ++shown;
    const query = `run=${encodeURIComponent(run)}`;
    frame.src = `dashboard?${query}`;
    tables.replaceChildren(el('p', {class: 'meta'}, 'loading…'));
    let view;
    try {
      view = reportView(await getJSON(`report?${query}`));
    } catch (error) {
      view = [el('p', {class: 'error'}, `attnprof: cannot load ${run} (${error.message})`)];
    }
    if (ticket === shown) tables.replaceChildren(...view);
  }
  select.addEventListener('change', () => show(select.value));
  await show(runs[0].run);
}
