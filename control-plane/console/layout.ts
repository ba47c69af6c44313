import { html, type SafeHtml } from './html.js';
import type { ConsoleSession } from './sessions.js';

/** A page in the navigation: the built-in ones, and those a later domain adds (federated, issue 15). */
export interface NavEntry {
  path: string;
  title: string;
}

export const BUILT_IN_NAV: readonly NavEntry[] = [
  { path: '/ui/fleet', title: 'Fleet' },
  { path: '/ui/models', title: 'Models' },
  { path: '/ui/rollouts', title: 'Rollouts' },
  { path: '/ui/drift', title: 'Drift' },
  { path: '/ui/training', title: 'Training' },
];

/** The hidden CSRF field every form carries. */
export const csrfField = (session: ConsoleSession): SafeHtml => html`<input type="hidden" name="csrf" value="${session.csrf}" />`;

export function page(options: {
  title: string;
  body: SafeHtml;
  session?: ConsoleSession | undefined;
  nav?: readonly NavEntry[];
  active?: string;
  /** Loads uPlot (pages with charts). */
  charts?: boolean;
}): string {
  const { session } = options;
  const nav = options.nav ?? BUILT_IN_NAV;
  return html`<!doctype html>
    <html lang="en">
      <head>
        <meta charset="utf-8" />
        <meta name="viewport" content="width=device-width, initial-scale=1" />
        <title>${options.title} · Driftline</title>
        <link rel="stylesheet" href="/ui/assets/console.css" />
        ${
          options.charts
            ? html`<link rel="stylesheet" href="/ui/assets/uplot.min.css" />
                <script src="/ui/assets/uplot.iife.min.js" defer></script>`
            : ''
        }
        <script src="/ui/assets/console.js" defer></script>
      </head>
      <body>
        <a class="skip-link" href="#main">Skip to content</a>
        <header class="top">
          <a class="brand" href="/ui/fleet">Driftline</a>
          ${
            session
              ? html`<nav aria-label="Main">
                    <ul>
                      ${nav.map((n) => html`<li><a href="${n.path}" ${options.active === n.path ? html` aria-current="page"` : ''}>${n.title}</a></li>`)}
                    </ul>
                  </nav>
                  <form class="signout" method="post" action="/ui/logout">
                    ${csrfField(session)}<span class="who">${session.tokenName} (${session.role})</span> <button type="submit">Sign out</button>
                  </form>`
              : ''
          }
        </header>
        <main id="main" tabindex="-1">
          <h1>${options.title}</h1>
          ${options.body}
        </main>
      </body>
    </html> `.text;
}

/** A table, or a line saying there is nothing to show. */
export function table(caption: string, headers: readonly string[], rows: readonly SafeHtml[], empty = 'Nothing yet.'): SafeHtml {
  if (rows.length === 0) return html`<p class="empty">${empty}</p>`;
  return html`<div class="table-wrap">
    <table>
      <caption>
        ${caption}
      </caption>
      <thead>
        <tr>
          ${headers.map((h) => html`<th scope="col">${h}</th>`)}
        </tr>
      </thead>
      <tbody>
        ${rows}
      </tbody>
    </table>
  </div>`;
}

/** Counts by a key, largest first, as a definition list. */
export function countsList(label: string, counts: Record<string, number>, unit: string): SafeHtml {
  const entries = Object.entries(counts).sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0]));
  return html`<section class="card">
    <h2>${label}</h2>
    ${
      entries.length === 0
        ? html`<p class="empty">None.</p>`
        : html`<dl class="counts">
            ${entries.map(
              ([k, n]) =>
                html`<dt>${k || '(none)'}</dt>
                  <dd>${n.toLocaleString('en-US')} ${n === 1 ? unit : `${unit}s`}</dd>`,
            )}
          </dl>`
    }
  </section>`;
}
