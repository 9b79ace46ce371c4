// The geoplantnet viewer: Leaflet raster tiles from this server (/tiles/...), menus from /api/catalog, species
// search from /api/species, a pixel's description from /api/point. Nothing is fetched from elsewhere.
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  const state = { catalog: null, product: null, variable: null, species: null, speciesName: null, year: null,
                  layer: null, loads: 0 };
  const map = L.map("map", { zoomControl: true, attributionControl: false });
  window.viewer = { map: map, state: state, tileUrl: null };

  async function getJSON(url) {
    const response = await fetch(url);
    if (!response.ok) throw new Error(url + ": HTTP " + response.status);
    return response.json();
  }
  const fmt = (v, d) => (v === null || v === undefined ? "–" : Number(v).toFixed(d === undefined ? 3 : d));
  const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
  const option = (select, value, text) => { const o = document.createElement("option"); o.value = value; o.textContent = text; select.appendChild(o); };

  function product() { return state.catalog.products.find((p) => p.product === state.product); }
  function item() {
    const items = product().items;
    return items.find((i) => i.year === state.year) || items[items.length - 1];
  }
  function variable() { return item().variables.find((v) => v.name === state.variable) || item().variables[0]; }

  function fillProducts() {
    const select = $("product");
    select.innerHTML = "";
    state.catalog.products.forEach((p) => option(select, p.product, p.product));
    state.product = state.catalog.products.some((p) => p.product === "species") ? "species" : state.catalog.products[0].product;
    select.value = state.product;
    fillYears();
    fillVariables();
  }
  function fillYears() {
    const select = $("year");
    select.innerHTML = "";
    const years = product().items.map((i) => i.year).filter((y) => y !== null);
    years.forEach((y) => option(select, y, y));
    if (!years.length) option(select, "", "(no years)");
    select.disabled = !years.length;
    state.year = years.length ? (years.includes(state.year) ? state.year : years[years.length - 1]) : null;
    select.value = state.year === null ? "" : state.year;
  }
  function fillVariables() {
    const select = $("variable");
    select.innerHTML = "";
    item().variables.forEach((v) => option(select, v.name, v.name + (v.units && v.units !== "1" ? " (" + v.units + ")" : "")));
    if (!item().variables.some((v) => v.name === state.variable)) {
      // a species map opens on a species' probability, not on its bookkeeping layers (clear_seasons, coverage)
      state.variable = (item().variables.find((v) => v.kind === "species") || item().variables[0]).name;
    }
    select.value = state.variable;
    $("species-box").style.display = variable().kind === "species" ? "" : "none";
  }

  async function chooseDefaultSpecies() {
    if (state.species) return;
    const hits = await getJSON("/api/species?q=");
    if (hits.length) { state.species = hits[0].id; state.speciesName = hits[0].name; }
  }

  let redraws = 0;
  async function redraw() {
    const mine = ++redraws;  // menus changed in quick succession: only the latest choice draws
    const v = variable();
    if (v.kind === "species") await chooseDefaultSpecies();
    if (mine !== redraws) return;
    $("species-chosen").textContent = v.kind === "species" && state.species ? state.speciesName + " (" + state.species + ")" : "";
    let url = "/tiles/" + encodeURIComponent(item().id) + "/" + encodeURIComponent(v.name) + "/{z}/{x}/{y}.png";
    if (v.kind === "species") url += "?species=" + encodeURIComponent(state.species);
    window.viewer.tileUrl = url;
    if (state.layer) map.removeLayer(state.layer);
    state.layer = L.tileLayer(url, { maxZoom: 20, maxNativeZoom: 20, opacity: 0.9 });
    state.layer.on("load", () => { state.loads += 1; document.body.dataset.tilesLoaded = String(state.loads); });
    document.body.dataset.tileUrl = url;
    state.layer.addTo(map);
    await drawLegend(v, mine);
  }

  async function drawLegend(v, mine) {
    const legend = await getJSON("/api/legend/" + encodeURIComponent(item().id) + "/" + encodeURIComponent(v.name));
    if (mine !== redraws) return;
    let html = "<div><b>" + esc(v.long_name) + "</b></div>";
    if (v.kind === "class") {
      html += '<div class="classes">' + v.classes.map((c) =>
        '<span><span class="swatch" style="background:' + classColour(legend, c.code) + '"></span>' + esc(c.label) + "</span>").join("") + "</div>";
    } else {
      html += '<div class="bar" style="background: linear-gradient(to right, ' + legend.colors.join(", ") + ')"></div>' +
        '<div class="ticks"><span>' + fmt(legend.min) + "</span><span>" + fmt(legend.max) + "</span></div>";
    }
    $("legend").innerHTML = html;
  }
  function classColour(legend, i) { return legend.classColors ? legend.classColors[i % legend.classColors.length] : "#888"; }

  let searches = 0;
  async function search() {
    const q = $("species-search").value;
    const mine = ++searches;
    const hits = await getJSON("/api/species?q=" + encodeURIComponent(q));
    if (mine !== searches) return;  // a later keystroke's answer wins, whatever order they arrive in
    const list = $("species-results");
    list.innerHTML = "";
    list.dataset.q = q;
    hits.forEach((h) => {
      const li = document.createElement("li");
      li.textContent = h.name + " (" + h.id + ")";
      li.dataset.id = h.id;
      li.addEventListener("click", () => { state.species = h.id; state.speciesName = h.name; list.innerHTML = ""; redraw(); });
      list.appendChild(li);
    });
  }

  function table(rows) { return "<table>" + rows.map((r) => "<tr>" + r.map((c, i) => "<td" + (i ? ' class="num"' : "") + ">" + c + "</td>").join("") + "</tr>").join("") + "</table>"; }
  let marker = null;
  async function describe(e) {
    const lon = e.latlng.lng, lat = e.latlng.lat;
    if (marker) map.removeLayer(marker);
    marker = L.circleMarker(e.latlng, { radius: 6, color: "#d00", weight: 2, fill: false }).addTo(map);
    const query = "/api/point?lon=" + lon + "&lat=" + lat + (state.year === null ? "" : "&year=" + state.year);
    const d = await getJSON(query);
    let html = "<div>" + fmt(lat, 5) + ", " + fmt(lon, 5) + (d.year ? " — " + d.year : "") + "</div>";
    if (d.species && d.species.length) {
      html += "<h2>Assemblage (top species)</h2>" + table(d.species.map((s) => ['<span class="sp" data-id="' + esc(s.id) + '">' + esc(s.name) + "</span>", fmt(s.probability)]));
    }
    if (d.habitat) {
      html += "<h2>Habitat</h2><div>" + esc(d.habitat.name || d.habitat.class || "–") + " (p = " + fmt(d.habitat.probability) + ")</div>" +
        "<div>conformal set: " + esc((d.habitat.set || []).map((s) => (typeof s === "object" ? (s.name || s.class) : s)).join(", ")) + "</div>";
    }
    ["indicators", "value", "changes"].forEach((key) => {
      const block = d[key];
      if (!block || !Object.keys(block).length) return;
      html += "<h2>" + key[0].toUpperCase() + key.slice(1) + "</h2>" + table(Object.entries(block).map(([name, v]) => {
        if (v !== null && typeof v === "object") {
          const interval = v.lower !== undefined ? " [" + fmt(v.lower) + ", " + fmt(v.upper) + "]" : "";
          return [esc(name), v.label ? esc(v.label) : fmt(v.value) + interval];
        }
        return [esc(name), typeof v === "number" ? fmt(v) : esc(v)];
      }));
    });
    if (html.indexOf("<h2>") < 0) html += '<p class="hint">No data here.</p>';
    $("panel").innerHTML = html;
    $("panel").dataset.point = JSON.stringify(d);
  }

  async function start() {
    state.catalog = await getJSON("/api/catalog");
    if (!state.catalog.products.length) { $("panel").textContent = "This root's catalogue lists no product."; return; }
    fillProducts();
    const b = item().bounds;
    if (b) map.fitBounds([[b[1], b[0]], [b[3], b[2]]]); else map.setView([50, 10], 4);
    $("product").addEventListener("change", (e) => { state.product = e.target.value; fillYears(); fillVariables(); redraw(); });
    $("variable").addEventListener("change", (e) => { state.variable = e.target.value; fillVariables(); redraw(); });
    $("year").addEventListener("change", (e) => { state.year = Number(e.target.value); fillVariables(); redraw(); });
    $("species-search").addEventListener("input", search);
    map.on("click", describe);
    await redraw();
    document.body.dataset.ready = "true";
  }
  start().catch((err) => { console.error(err); $("panel").textContent = String(err); });
})();
