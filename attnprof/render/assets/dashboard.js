(function () {
  const data = JSON.parse(document.getElementById("attnprof-data").textContent);
  const root = document.documentElement;
  const stored = window.localStorage ? localStorage.getItem("attnprof-theme") : null;
  let theme = stored || (window.matchMedia && matchMedia("(prefers-color-scheme: dark)").matches ? "dark" : "light");
  const config = {responsive: true, displaylogo: false};
  function layoutFor(fig) { return Object.assign({}, fig.layout || {}, {template: data.templates[theme]}); }
  function apply() {
    root.dataset.theme = theme;
    document.getElementById("theme").textContent = theme === "dark" ? "light theme" : "dark theme";
  }
  apply();
  for (const [key, fig] of Object.entries(data.figures)) {
    Plotly.newPlot(document.getElementById("fig-" + key), fig.data, layoutFor(fig), config);
  }
  document.getElementById("theme").addEventListener("click", function () {
    theme = theme === "dark" ? "light" : "dark";
    if (window.localStorage) localStorage.setItem("attnprof-theme", theme);
    apply();
    for (const key of Object.keys(data.figures)) {
      Plotly.relayout(document.getElementById("fig-" + key), {template: data.templates[theme]});
    }
  });
})();
