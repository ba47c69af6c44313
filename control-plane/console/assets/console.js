// Progressive enhancement for the Driftline console. Every page reads without this file: it
// converts times to the viewer's zone, keeps live pages current over Server-Sent Events and
// draws charts with uPlot. No inline script or style anywhere (the CSP forbids both).
'use strict';

(function () {
  var zoneFormat = new Intl.DateTimeFormat(undefined, {
    year: 'numeric',
    month: '2-digit',
    day: '2-digit',
    hour: '2-digit',
    minute: '2-digit',
    second: '2-digit',
    timeZoneName: 'short',
  });

  /** Times arrive in UTC; they are shown in the viewer's zone, with UTC kept in the title. */
  function localTimes(root) {
    var times = root.querySelectorAll('time[datetime]');
    for (var i = 0; i < times.length; i++) {
      var el = times[i];
      if (el.dataset.local) continue;
      var d = new Date(el.getAttribute('datetime'));
      if (isNaN(d.getTime())) continue;
      if (!el.title) el.title = el.textContent;
      el.textContent = zoneFormat.format(d);
      el.dataset.local = '1';
    }
  }

  /** A [data-live] region is replaced with the server's rendering of it as events arrive. */
  function live(region) {
    if (!window.EventSource) return;
    var source = new EventSource(region.dataset.live);
    var update = function (message) {
      var data = JSON.parse(message.data);
      // Server-rendered, every value escaped there: the same markup a reload would give.
      region.innerHTML = data.html;
      localTimes(region);
      region.dataset.state = data.state;
      if (data.logLines && data.logLines.length) {
        var log = document.getElementById('job-log');
        if (log) log.textContent += data.logLines.join('\n') + '\n';
      }
    };
    source.addEventListener('rollout', update);
    source.addEventListener('job', update);
    // The server ends a stream when the rollout or job is over: no reconnect then.
    source.addEventListener('error', function () {
      if (source.readyState === EventSource.CLOSED || region.dataset.state === 'succeeded' || region.dataset.state === 'aborted') source.close();
    });
    window.addEventListener('pagehide', function () {
      source.close();
    });
  }

  function histogram(figure) {
    if (!window.uPlot) return;
    var data = JSON.parse(figure.dataset.series);
    var xs = data.labels.map(function (_, i) {
      return i;
    });
    var width = Math.max(280, Math.min(figure.clientWidth || 640, 900));
    var bars = uPlot.paths && uPlot.paths.bars ? uPlot.paths.bars({ size: [0.4, 40], align: 0 }) : undefined;
    var chart = document.createElement('div');
    chart.className = 'chart-canvas';
    chart.setAttribute('role', 'img');
    chart.setAttribute('aria-label', 'Reference against current share of rows per bin (the table below has the numbers)');
    figure.insertBefore(chart, figure.firstChild);
    new uPlot(
      {
        width: width,
        height: 260,
        scales: { x: { time: false, range: [-0.5, xs.length - 0.5] }, y: { range: [0, null] } },
        axes: [
          {
            values: function (_, ticks) {
              return ticks.map(function (t) {
                return data.labels[t] || '';
              });
            },
            rotate: -30,
            size: 60,
          },
          {
            values: function (_, ticks) {
              return ticks.map(function (t) {
                return Math.round(t * 100) + ' %';
              });
            },
          },
        ],
        series: [
          { label: 'bin' },
          { label: 'reference', stroke: '#3465a4', fill: 'rgba(52,101,164,0.4)', paths: bars },
          { label: 'current', stroke: '#c4501d', fill: 'rgba(196,80,29,0.4)', paths: bars },
        ],
      },
      [xs, data.reference, data.current],
      chart,
    );
  }

  function start() {
    localTimes(document);
    var regions = document.querySelectorAll('[data-live]');
    for (var i = 0; i < regions.length; i++) live(regions[i]);
    var charts = document.querySelectorAll('figure[data-chart="histogram"]');
    for (var j = 0; j < charts.length; j++) histogram(charts[j]);
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start);
  else start();
})();
