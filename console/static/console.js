// scorestream console: the little the server-rendered pages need from a script.
//  - [data-sse="<url>"]: a live list; each server-sent `message` is an HTML <li>, put on top
//    (at most data-max of them); `data-empty` is hidden once one arrives.
//  - [data-sse-stats="<url>"]: each event is JSON {name: {value, text}}; every <data data-k=name>
//    inside gets its value and text (the overview's figures).
//  - a[data-load="<target id>"]: its href's HTML (a fragment) replaces the target's content
//    (the RFM grid's contact lists, their pages); the clicked cell gets `selected`.
//  - form[data-confirm]: asks before it is sent (promote a model, retry deliveries).
"use strict";
(function () {
  function live(list) {
    var source = new EventSource(list.dataset.sse);
    var max = parseInt(list.dataset.max || "50", 10);
    source.onmessage = function (event) {
      var holder = document.createElement("ul");
      holder.innerHTML = event.data;
      var item = holder.firstElementChild;
      if (!item) return;
      item.classList.add("fresh");
      list.insertBefore(item, list.firstChild);
      while (list.children.length > max) list.removeChild(list.lastChild);
      var empty = document.getElementById(list.dataset.empty || "");
      if (empty) empty.hidden = true;
    };
  }
  function stats(box) {
    var source = new EventSource(box.dataset.sseStats);
    source.onmessage = function (event) {
      var values = JSON.parse(event.data);
      Object.keys(values).forEach(function (name) {
        box.querySelectorAll('data[data-k="' + name + '"]').forEach(function (el) {
          el.value = values[name].value === null ? "" : String(values[name].value);
          el.textContent = values[name].text;
        });
      });
    };
  }
  function load(link, event) {
    var target = document.getElementById(link.dataset.load);
    if (!target) return;
    event.preventDefault();
    fetch(link.href, { credentials: "same-origin", headers: { "X-Console-Fragment": "1" } })
      .then(function (answer) { return answer.text(); })
      .then(function (html) {
        target.innerHTML = html;
        var cell = link.closest("td");  // a grid cell (a pager link inside the target keeps the cell marked)
        if (!cell) return;
        document.querySelectorAll("td.selected").forEach(function (el) { el.classList.remove("selected"); });
        cell.classList.add("selected");
      });
  }
  document.addEventListener("click", function (event) {
    var link = event.target.closest ? event.target.closest("a[data-load]") : null;
    if (link) load(link, event);
  });
  document.addEventListener("submit", function (event) {
    var form = event.target;
    if (form.dataset && form.dataset.confirm && !window.confirm(form.dataset.confirm)) event.preventDefault();
  });
  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-sse]").forEach(live);
    document.querySelectorAll("[data-sse-stats]").forEach(stats);
  });
})();
