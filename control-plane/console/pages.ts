import { activeModelsOf, desiredModelsOf } from '../../common/device-protocol/model-set.js';
import { REFERENCE_METADATA_KEY } from '../../common/drift/reference.js';
import { isActive, formatGate } from '../rollout/plan.js';
import type { Rollout } from '../rollout/state-machine.js';
import type { TrainingJob } from '../training/job-state-machine.js';
import { bytes, count, decimal, duration, milliseconds, percent, time } from './format.js';
import { html, type SafeHtml } from './html.js';
import { countsList, csrfField, table } from './layout.js';
import type { ConsoleDeps } from './ports.js';
import type { ConsoleSession } from './sessions.js';
import { roleAtLeast } from '../fleet/operator-tokens.js';

/** Devices per page of the fleet table. */
export const DEVICES_PER_PAGE = 50;

const link = (href: string, text: string): SafeHtml => html`<a href="${href}">${text}</a>`;
const enc = encodeURIComponent;
const badge = (state: string): SafeHtml => html`<span class="badge state-${state.replace(/[^a-z_-]/g, '')}">${state}</span>`;

export async function fleetPage(deps: ConsoleDeps, url: URL): Promise<SafeHtml> {
  const search = (url.searchParams.get('q') ?? '').slice(0, 128);
  const pageNo = Math.max(1, Math.min(1_000_000, Number.parseInt(url.searchParams.get('page') ?? '1', 10) || 1));
  const now = deps.clock.now();
  const [summary, found] = await Promise.all([
    deps.fleet.summary(now - deps.config.onlineWindowMs),
    deps.fleet.page({ search, offset: (pageNo - 1) * DEVICES_PER_PAGE, limit: DEVICES_PER_PAGE }),
  ]);
  const pages = Math.max(1, Math.ceil(found.total / DEVICES_PER_PAGE));
  const pageHref = (n: number): string => `/ui/fleet?${search ? `q=${enc(search)}&` : ''}page=${n}`;
  const rows = found.devices.map((d) => {
    const online = d.lastSeenMs > 0 && now - d.lastSeenMs <= deps.config.onlineWindowMs;
    const models = activeModelsOf(d.reported);
    return html`<tr>
      <td>${link(`/ui/devices/${enc(d.id)}`, d.id)}</td>
      <td>${online ? html`<span class="badge state-online">online</span>` : html`<span class="badge state-offline">offline</span>`}</td>
      <td>${d.reported?.firmwareProfile || d.labels.profile || ''}</td>
      <td>${d.reported?.agentVersion ?? ''}</td>
      <td>${models.map((m) => `${m.name} v${m.version}`).join(', ')}</td>
      <td>${time(d.lastSeenMs)}</td>
    </tr>`;
  });
  return html`<section class="summary" aria-label="Fleet summary">
      <div class="stat"><span class="value" data-testid="online-count">${summary.online.toLocaleString('en-US')}</span> <span class="unit">online</span></div>
      <div class="stat"><span class="value">${(summary.enrolled - summary.online).toLocaleString('en-US')}</span> <span class="unit">offline</span></div>
      <div class="stat"><span class="value">${summary.enrolled.toLocaleString('en-US')}</span> <span class="unit">enrolled devices</span></div>
    </section>
    <div class="cards">
      ${countsList('By firmware profile', summary.byProfile, 'device')} ${countsList('By agent version', summary.byAgentVersion, 'device')}
      ${countsList('By model version', summary.byModelVersion, 'device')}
    </div>
    <h2>Devices</h2>
    <form class="search" method="get" action="/ui/fleet" role="search">
      <label for="q">Search devices by id or label</label>
      <input id="q" name="q" type="search" value="${search}" maxlength="128" />
      <button type="submit">Search</button>
    </form>
    <p class="muted" data-testid="device-total">${count(found.total, 'device')} match; page ${pageNo} of ${pages}.</p>
    ${table('Devices', ['Device', 'Status', 'Profile', 'Agent', 'Models', 'Last seen'], rows, 'No device matches.')}
    <nav class="pager" aria-label="Pages">
      ${pageNo > 1 ? html`<a rel="prev" href="${pageHref(pageNo - 1)}">Previous page</a>` : ''}
      ${pageNo < pages ? html`<a rel="next" href="${pageHref(pageNo + 1)}">Next page</a>` : ''}
    </nav>`;
}

export async function devicePage(deps: ConsoleDeps, deviceId: string): Promise<SafeHtml> {
  const d = await deps.fleet.get(deviceId);
  const now = deps.clock.now();
  const r = d.reported;
  const online = d.status === 'enrolled' && d.lastSeenMs > 0 && now - d.lastSeenMs <= deps.config.onlineWindowMs;
  const models = activeModelsOf(r);
  const desired = desiredModelsOf(d.desired);
  return html`<dl class="facts">
      <dt>Status</dt>
      <dd>${d.status}${d.status === 'enrolled' ? html`, ${online ? 'online' : 'offline'}` : ''}</dd>
      <dt>Enrolled</dt>
      <dd>${time(d.enrolledAtMs)}</dd>
      <dt>Last seen</dt>
      <dd>${time(d.lastSeenMs)}</dd>
      <dt>Labels</dt>
      <dd>${Object.entries(d.labels).map(([k, v]) => html`<code>${k}=${v}</code> `)}</dd>
      <dt>Agent version</dt>
      <dd>${r?.agentVersion || '–'}</dd>
      <dt>Firmware profile</dt>
      <dd>${r?.firmwareProfile || d.labels.profile || '–'}</dd>
      <dt>Buffer depth</dt>
      <dd>${r ? count(r.bufferDepth, 'record') : '–'}</dd>
      <dt>Dropped records</dt>
      <dd>${r ? count(r.droppedRecords, 'record') : '–'}</dd>
      <dt>Uptime</dt>
      <dd>${r ? duration(r.uptimeS * 1000) : '–'}</dd>
      <dt>Reported</dt>
      <dd>${r ? time(r.reportedAtMs) : 'never'}</dd>
      <dt>Last error</dt>
      <dd>${r?.lastErrorCode ? html`<code>${r.lastErrorCode}</code> ${r.lastError}` : 'none'}</dd>
      <dt>Warnings</dt>
      <dd>
        ${
          r && r.warnings.length > 0
            ? html`<ul>
                ${r.warnings.map((w) => html`<li>${w}</li>`)}
              </ul>`
            : 'none'
        }
      </dd>
    </dl>
    ${table(
      'Models the device serves',
      ['Model', 'Version', 'State', 'Provider', 'Fallbacks', 'Memory', 'Last error'],
      models.map(
        (m) =>
          html`<tr>
            <td>${m.name}</td>
            <td>v${m.version}</td>
            <td>${badge(m.state || 'serving')}</td>
            <td>${m.provider}</td>
            <td>${m.fallbacks.join(' → ') || 'none'}</td>
            <td>${bytes(m.memoryBytes)}</td>
            <td>${m.lastErrorCode ? html`<code>${m.lastErrorCode}</code> ${m.lastError}` : 'none'}</td>
          </tr>`,
      ),
      'The device reports no model.',
    )}
    ${table(
      'Models the device was asked to serve',
      ['Model', 'Version', 'Size'],
      desired.map(
        (m) =>
          html`<tr>
            <td>${m.name}</td>
            <td>v${m.version}</td>
            <td>${bytes(m.sizeBytes)}</td>
          </tr>`,
      ),
      'No desired model.',
    )}`;
}

export async function modelsPage(deps: ConsoleDeps): Promise<SafeHtml> {
  const latest = await deps.registry.listLatest();
  return table(
    'Models, latest version of each',
    ['Model', 'Latest version', 'Size', 'Created'],
    latest.map(
      (m) =>
        html`<tr>
          <td>${link(`/ui/models/${enc(m.name)}`, m.name)}</td>
          <td>v${m.version}</td>
          <td>${bytes(m.sizeBytes)}</td>
          <td>${time(m.createdAtMs)}</td>
        </tr>`,
    ),
    'No model uploaded yet.',
  );
}

export async function modelPage(deps: ConsoleDeps, name: string): Promise<SafeHtml> {
  const model = await deps.registry.get(name);
  const versions = [...model.versions].sort((a, b) => b.version - a.version).slice(0, 200);
  const statuses = deps.releases ? await deps.releases.statuses(versions.map((v) => ({ name, version: v.version }))) : [];
  const signature = new Map(statuses.map((s) => [s.version, s]));
  return html`${table(
    `Versions of ${name}`,
    ['Version', 'Signature', 'Lineage', 'Evaluation', 'Signature (inputs → outputs)', 'Size', 'Created'],
    versions.map((v) => {
      const lineage = Object.entries(v.metadata).filter(([k]) => k.startsWith('lineage.') && k !== 'lineage.hyperparameters');
      const evaluation = Object.entries(v.metadata).filter(([k]) => k.startsWith('evaluation.'));
      const status = signature.get(v.version);
      return html`<tr>
        <td>v${v.version}${v.amendsVersion ? html` <span class="muted">(amends v${v.amendsVersion})</span>` : ''}</td>
        <td>
          ${badge(status?.status ?? 'unsigned')}${status?.signedBy ? html` <span class="muted">by ${status.signedBy}</span>` : ''}${status?.reason ? html` <code>${status.reason}</code>` : ''}
        </td>
        <td>
          ${
            lineage.length
              ? html`<dl class="compact">
                  ${lineage.map(
                    ([k, val]) =>
                      html`<dt>${k.slice(8)}</dt>
                        <dd>${val}</dd>`,
                  )}
                </dl>`
              : 'uploaded'
          }
        </td>
        <td>
          ${
            evaluation.length
              ? html`<dl class="compact">
                  ${evaluation.map(
                    ([k, val]) =>
                      html`<dt>${k.slice(11)}</dt>
                        <dd>${val}</dd>`,
                  )}
                </dl>`
              : '–'
          }
        </td>
        <td>
          <code>${v.inputs.map((t) => `${t.name}[${t.shape.join('×')}]`).join(', ')}</code> →
          <code>${v.outputs.map((t) => `${t.name}[${t.shape.join('×')}]`).join(', ')}</code
          >${v.metadata[REFERENCE_METADATA_KEY] ? html`<br /><span class="muted">has a drift reference</span>` : ''}
        </td>
        <td>${bytes(v.sizeBytes)}</td>
        <td>${time(v.createdAtMs)}</td>
      </tr>`;
    }),
  )}`;
}

export async function rolloutsPage(deps: ConsoleDeps): Promise<SafeHtml> {
  const rollouts = await deps.rollouts.list({ limit: 200 });
  return table(
    'Rollouts, newest first',
    ['Rollout', 'Model', 'State', 'Wave', 'Devices', 'Updated'],
    rollouts.map(
      (r) =>
        html`<tr>
          <td>${link(`/ui/rollouts/${enc(r.id)}`, r.id)}</td>
          <td>${r.plan.model} v${r.plan.version}</td>
          <td>${badge(r.state)}</td>
          <td>${r.wave + 1} of ${r.plan.waves.length}</td>
          <td>${count(r.targets.length, 'device')}</td>
          <td>${time(r.updatedAtMs)}</td>
        </tr>`,
    ),
    'No rollout yet.',
  );
}

const COMMANDS = [
  { command: 'pause', label: 'Pause', allowed: (r: Rollout) => r.state === 'progressing' || r.state === 'pending' },
  { command: 'resume', label: 'Resume', allowed: (r: Rollout) => r.state === 'paused' },
  { command: 'promote', label: 'Promote to the next wave', allowed: (r: Rollout) => isActive(r.state) },
  { command: 'abort', label: 'Abort and roll back', allowed: (r: Rollout) => isActive(r.state) },
] as const;

export const ROLLOUT_COMMANDS: readonly string[] = COMMANDS.map((c) => c.command);

/** The part of a rollout's page that changes as it runs: rendered here and sent again over SSE. */
export async function rolloutStatus(deps: ConsoleDeps, r: Rollout, session: ConsoleSession): Promise<SafeHtml> {
  const versions = await deps.rollouts.versionCounts(r);
  const mayAct = roleAtLeast(session.role, 'operator');
  const commands = COMMANDS.filter((c) => c.allowed(r));
  const waveStatus = (i: number): string => {
    if (i < r.wave) return 'passed';
    if (i > r.wave) return r.state === 'aborted' ? 'skipped' : 'pending';
    return { progressing: 'baking', paused: 'paused', aborted: 'failed', succeeded: 'passed', pending: 'pending' }[r.state];
  };
  const now = deps.clock.now();
  return html`<p class="lead">
      State ${html`<span data-testid="rollout-state">${badge(r.state)}</span>`}, wave ${r.wave + 1} of
      ${r.plan.waves.length}${r.reason ? html`: ${r.reason}` : ''}.
    </p>
    ${
      mayAct && commands.length > 0
        ? html`<div class="actions">
            ${commands.map(
              (c) =>
                html`<form method="post" action="/ui/rollouts/${enc(r.id)}/${c.command}">
                  ${csrfField(session)}<input type="hidden" name="expect" value="${r.state}" /><button
                    type="submit"
                    class="${c.command === 'abort' ? 'danger' : ''}"
                  >
                    ${c.label}
                  </button>
                </form>`,
            )}
          </div>`
        : ''
    }
    ${table(
      'Waves',
      ['Wave', 'Share', 'Devices', 'Bake', 'Status', 'Progress'],
      r.plan.waves.map((w, i) => {
        const baked = i === r.wave && r.state === 'progressing' && w.bakeMs > 0 ? Math.min(1, (now - r.waveStartedAtMs) / w.bakeMs) : i < r.wave ? 1 : 0;
        return html`<tr>
          <td>${i + 1}</td>
          <td>${w.percent} %</td>
          <td>${count(r.waveSizes[i] ?? 0, 'device')}</td>
          <td>${duration(w.bakeMs)}</td>
          <td>${badge(waveStatus(i))}</td>
          <td><progress max="100" value="${Math.round(baked * 100)}">${Math.round(baked * 100)} %</progress> ${Math.round(baked * 100)} %</td>
        </tr>`;
      }),
    )}
    ${table(
      `Gates at the last evaluation${r.lastEvaluation ? '' : ' (none yet)'}`,
      ['Gate', 'Verdict', 'Value', 'Threshold', 'Detail'],
      (r.lastEvaluation?.results ?? []).map(
        (g) =>
          html`<tr>
            <td><code>${g.gate}</code></td>
            <td>${badge(g.verdict)}</td>
            <td>${g.value === null ? '–' : decimal(g.value)}</td>
            <td>${decimal(g.threshold)}</td>
            <td>${g.detail}</td>
          </tr>`,
      ),
      r.plan.gates.length ? `No evaluation yet; gates: ${r.plan.gates.map(formatGate).join(', ')}.` : 'This rollout has no gates.',
    )}
    ${table(
      'Targeted devices per version',
      ['Version', 'Devices'],
      Object.entries(versions)
        .sort((a, b) => Number(b[0]) - Number(a[0]))
        .map(
          ([v, n]) =>
            html`<tr>
              <td>${v === '0' ? 'none' : `v${v}`}</td>
              <td>${count(n, 'device')}</td>
            </tr>`,
        ),
    )}
    <p class="muted">
      ${count(r.touched, 'device')} sent the new version, ${count(r.rolledBack.length, 'device')} rolled back,
      ${count(r.incompatible.length, 'incompatible device')}; updated ${time(r.updatedAtMs)}.
    </p>`;
}

export async function rolloutPage(deps: ConsoleDeps, id: string, session: ConsoleSession): Promise<SafeHtml> {
  const r = await deps.rollouts.get(id);
  const audit = await deps.rollouts.audit(id);
  return html`<p>
      ${r.plan.model} v${r.plan.version} to <code>${r.plan.target || 'every device'}</code>, from v${r.baselineVersion}; started ${time(r.createdAtMs)}.
    </p>
    <section id="rollout-status" data-live="/ui/events/rollouts/${enc(r.id)}" aria-live="polite">${await rolloutStatus(deps, r, session)}</section>
    <h2>Audit log</h2>
    ${table(
      'Audit log, oldest first',
      ['When', 'Actor', 'Action', 'From', 'To', 'Wave', 'Reason'],
      audit.map(
        (e) =>
          html`<tr>
            <td>${time(e.atMs)}</td>
            <td>${e.actor}</td>
            <td>${e.action}</td>
            <td>${e.fromState}</td>
            <td>${e.toState}</td>
            <td>${e.wave + 1}</td>
            <td>${e.reason}</td>
          </tr>`,
      ),
    )}`;
}

/** Drift statistics the heat map shows, and their bucket edges (a CSS class per bucket: no inline style under the CSP). */
const HEAT_STATISTICS = {
  psi: { label: 'PSI', edges: [0.05, 0.1, 0.2, 0.3] },
  js: { label: 'Jensen–Shannon', edges: [0.02, 0.05, 0.1, 0.2] },
  ks: { label: 'KS', edges: [0.05, 0.1, 0.2, 0.3] },
} as const;
type HeatStatistic = keyof typeof HEAT_STATISTICS;
const HEAT_COLUMNS = 12;

const heatBucket = (value: number, edges: readonly number[]): number => edges.filter((e) => value >= e).length;

export async function driftPage(deps: ConsoleDeps, url: URL): Promise<{ body: SafeHtml; charts: boolean }> {
  const models = await deps.registry.listLatest();
  const modelName = url.searchParams.get('model') ?? models[0]?.name ?? '';
  const picker = html`<form class="search" method="get" action="/ui/drift">
    <label for="model">Model</label>
    <select id="model" name="model">
      ${models.map((m) => html`<option value="${m.name}" ${m.name === modelName ? html` selected` : ''}>${m.name}</option>`)}
    </select>
    <label for="stat">Statistic</label>
    <select id="stat" name="stat">
      ${Object.entries(HEAT_STATISTICS).map(([k, s]) => html`<option value="${k}" ${url.searchParams.get('stat') === k ? html` selected` : ''}>${s.label}</option>`)}
    </select>
    <button type="submit">Show</button>
  </form>`;
  if (!deps.drift || !modelName || !models.some((m) => m.name === modelName)) {
    return {
      body: html`${picker}
        <p class="empty">${deps.drift ? 'No model to show.' : 'This control plane does not serve drift.'}</p>`,
      charts: false,
    };
  }
  const stat: HeatStatistic = (Object.keys(HEAT_STATISTICS) as HeatStatistic[]).find((k) => k === url.searchParams.get('stat')) ?? 'psi';
  const now = deps.clock.now();
  const current = await deps.drift.status({ model: modelName, version: 0, sinceMs: 0 });
  const events = deps.driftEvents ? await deps.driftEvents.list({ model: modelName }, 200) : [];
  const fleetWide = current.filter((s) => s.cohort === '' && s.features.length > 0).sort((a, b) => b.version - a.version)[0];
  // The heat map: the fleet's status for the latest version with data, at HEAT_COLUMNS window ends back from now.
  let heat: SafeHtml = html`<p class="empty">No drift sketches in the window yet.</p>`;
  let histogram: SafeHtml = html``;
  if (fleetWide) {
    const windowMs = fleetWide.windowEndMs - fleetWide.windowStartMs;
    const ends = Array.from({ length: HEAT_COLUMNS }, (_, i) => now - (HEAT_COLUMNS - 1 - i) * windowMs);
    const columns = await Promise.all(
      ends.map(async (end) =>
        (await deps.drift!.statusAt({ model: modelName, version: fleetWide.version, sinceMs: end - windowMs }, end)).find((s) => s.cohort === ''),
      ),
    );
    const value = (f: { psi: number; jensenShannon: number; ks: number }): number => (stat === 'psi' ? f.psi : stat === 'js' ? f.jensenShannon : f.ks);
    const edges = HEAT_STATISTICS[stat].edges;
    heat = html`<div class="table-wrap">
        <table class="heat" data-testid="drift-heatmap">
          <caption>
            ${HEAT_STATISTICS[stat].label} per feature of ${modelName} v${fleetWide.version}, each column a ${duration(windowMs)} window ending at the time
            shown
          </caption>
          <thead>
            <tr>
              <th scope="col">Feature</th>
              ${ends.map((end) => html`<th scope="col">${time(end)}</th>`)}
            </tr>
          </thead>
          <tbody>
            ${fleetWide.features.map(
              (f) =>
                html`<tr>
                  <th scope="row"><a href="/ui/drift?model=${enc(modelName)}&amp;stat=${stat}&amp;feature=${enc(f.name)}">${f.name}</a></th>
                  ${columns.map((c) => {
                    const cell = c?.features.find((x) => x.name === f.name);
                    if (!cell || c!.rows === 0) return html`<td class="heat-none">–</td>`;
                    const v = value(cell);
                    return html`<td class="heat-${heatBucket(v, edges)}" title="${cell.status}">${decimal(v)}</td>`;
                  })}
                </tr>`,
            )}
          </tbody>
        </table>
      </div>
      <p class="legend">Buckets: ${edges.map((e, i) => html`<span class="heat-${i + 1}">≥ ${e}</span> `)}</p>`;
    const feature = url.searchParams.get('feature') ?? fleetWide.features[0]?.name ?? '';
    const h = feature ? await deps.drift.histogram({ model: modelName, version: fleetWide.version, cohort: '', feature, sinceMs: 0 }) : undefined;
    if (h) {
      const total = (xs: number[]): number => xs.reduce((a, b) => a + b, 0) || 1;
      const refTotal = total(h.reference);
      const curTotal = total(h.current);
      const binLabel = (i: number): string =>
        i === 0 ? `< ${h.edges[0]}` : i === h.edges.length ? `> ${h.edges[h.edges.length - 1]}` : `${decimal(h.edges[i - 1]!)} – ${decimal(h.edges[i]!)}`;
      const data = {
        labels: h.reference.map((_, i) => binLabel(i)),
        reference: h.reference.map((n) => n / refTotal),
        current: h.current.map((n) => n / curTotal),
      };
      histogram = html`<h2>${feature}: reference against the last ${duration(h.windowEndMs - h.windowStartMs)}</h2>
        <figure class="chart" data-chart="histogram" data-series="${JSON.stringify(data)}">
          ${table(
            `Share of rows per bin of ${feature} (${count(h.rows, 'row')} in the window)`,
            ['Bin', 'Reference', 'Current'],
            data.labels.map(
              (l, i) =>
                html`<tr>
                  <td>${l}</td>
                  <td>${percent(data.reference[i]!)}</td>
                  <td>${percent(data.current[i]!)}</td>
                </tr>`,
            ),
          )}
        </figure>`;
    }
  }
  return {
    charts: true,
    body: html`${picker}
      <h2>Status now</h2>
      ${table(
        `Drift of ${modelName} per version and cohort`,
        ['Version', 'Cohort', 'Status', 'Drifted share', 'Rows', 'Devices', 'p95 latency', 'Error rate', 'Reason'],
        current.map(
          (s) =>
            html`<tr>
              <td>v${s.version}</td>
              <td>${s.cohort || 'whole fleet'}</td>
              <td>${badge(s.status)}</td>
              <td>${percent(s.driftedShare)}</td>
              <td>${count(s.rows, 'row')}</td>
              <td>${count(s.devices, 'device')}</td>
              <td>${milliseconds(s.latencyP95Ms)}</td>
              <td>${percent(s.errorRate)}</td>
              <td>${s.reason}</td>
            </tr>`,
        ),
      )}
      <h2>Features over time</h2>
      ${heat} ${histogram}
      <h2>Status changes</h2>
      ${table(
        'Drift status changes, oldest first',
        ['When', 'Version', 'Cohort', 'From', 'To', 'Drifted features', 'Max PSI'],
        events.map(
          (e) =>
            html`<tr>
              <td>${time(e.atMs)}</td>
              <td>v${e.version}</td>
              <td>${e.cohort || 'whole fleet'}</td>
              <td>${e.previousStatus}</td>
              <td>${badge(e.status)}</td>
              <td>${e.driftedFeatures.join(', ')}</td>
              <td>${decimal(e.maxPsi)}</td>
            </tr>`,
        ),
        'No drift status change recorded.',
      )}`,
  };
}

export async function trainingPage(deps: ConsoleDeps): Promise<SafeHtml> {
  if (!deps.training) return html`<p class="empty">This control plane does not run training jobs.</p>`;
  const { jobs } = await deps.training.list({ pageSize: 200 });
  return table(
    'Training jobs, newest first',
    ['Job', 'Model', 'State', 'Attempt', 'Trainer', 'Result', 'Updated'],
    jobs.map(
      (j) =>
        html`<tr>
          <td>${link(`/ui/training/${enc(j.id)}`, j.id)}</td>
          <td>${j.spec.model} from v${j.spec.baseVersion}</td>
          <td>${badge(j.state)}</td>
          <td>${j.attempt} of ${j.spec.maxAttempts}</td>
          <td>${j.spec.trainer}</td>
          <td>${j.resultVersion ? `v${j.resultVersion}` : '–'}</td>
          <td>${time(j.updatedAtMs)}</td>
        </tr>`,
    ),
    'No training job yet.',
  );
}

export async function trainingJobStatus(job: TrainingJob): Promise<SafeHtml> {
  return html`<dl class="facts">
    <dt>State</dt>
    <dd data-testid="job-state">${badge(job.state)}${job.errorCode ? html` <code>${job.errorCode}</code>` : ''} ${job.reason}</dd>
    <dt>Attempt</dt>
    <dd>${job.attempt} of ${job.spec.maxAttempts}</dd>
    <dt>Progress</dt>
    <dd>${job.progress ? html`epoch ${job.progress.epoch}${job.progress.loss === null ? '' : html`, loss ${decimal(job.progress.loss)}`}` : '–'}</dd>
    <dt>Candidate</dt>
    <dd>${job.candidate ? html`${bytes(job.candidate.sizeBytes)} <code>${job.candidate.sha256.slice(0, 16)}</code>` : '–'}</dd>
    <dt>Evaluation</dt>
    <dd>${job.evaluation ? html`<code>${JSON.stringify(job.evaluation).slice(0, 2000)}</code>` : '–'}</dd>
    <dt>Result</dt>
    <dd>${job.resultVersion ? link(`/ui/models/${enc(job.spec.model)}`, `${job.spec.model} v${job.resultVersion}`) : '–'}</dd>
    <dt>Updated</dt>
    <dd>${time(job.updatedAtMs)}</dd>
  </dl>`;
}

export async function trainingJobPage(deps: ConsoleDeps, id: string): Promise<SafeHtml> {
  if (!deps.training) return html`<p class="empty">This control plane does not run training jobs.</p>`;
  const job = await deps.training.get(id);
  const logs = await deps.training.logs(id, { tail: 500 });
  return html`<p>
      ${job.spec.model} from v${job.spec.baseVersion} on dataset <code>${job.spec.datasetId}</code> with <code>${job.spec.trainer}</code>; created
      ${time(job.createdAtMs)}.
    </p>
    <section id="job-status" data-live="/ui/events/training/${enc(job.id)}" aria-live="polite">${await trainingJobStatus(job)}</section>
    <h2>Log (last 500 lines)</h2>
    <pre class="log" id="job-log" tabindex="0">${logs.map((l) => `[${new Date(l.atMs).toISOString()}] #${l.attempt} ${l.text}\n`)}</pre>`;
}
