// sparsify dashboard: optional auto-refresh of live pages, and iframes sized to their document.
(function () {
  "use strict";
  var body = document.body;
  var seconds = parseInt(body.getAttribute("data-refresh") || "0", 10);
  var box = document.getElementById("auto-refresh");
  if (box && seconds > 0) {
    var stored = window.localStorage.getItem("sparsify-auto-refresh");
    box.checked = stored === null ? body.getAttribute("data-live") === "1" : stored === "1";
    var timer = null;
    var arm = function () {
      if (timer) { window.clearTimeout(timer); timer = null; }
      if (box.checked) { timer = window.setTimeout(function () { window.location.reload(); }, seconds * 1000); }
    };
    box.addEventListener("change", function () {
      window.localStorage.setItem("sparsify-auto-refresh", box.checked ? "1" : "0");
      arm();
    });
    arm();
  }
  var fit = function (frame) {
    try {
      var doc = frame.contentDocument;
      if (doc && doc.documentElement) { frame.style.height = (doc.documentElement.scrollHeight + 24) + "px"; }
    } catch (e) { /* a document from elsewhere keeps its default height */ }
  };
  Array.prototype.forEach.call(document.querySelectorAll("iframe.doc"), function (frame) {
    frame.addEventListener("load", function () { fit(frame); });
    fit(frame);
  });
  var compare = document.getElementById("compare-button");
  if (compare) {
    var boxes = document.querySelectorAll("input[name=run]");
    var update = function () {
      var n = document.querySelectorAll("input[name=run]:checked").length;
      compare.disabled = n < 1;
      compare.textContent = n > 0 ? "Compare selected (" + n + ")" : "Compare selected";
    };
    Array.prototype.forEach.call(boxes, function (b) { b.addEventListener("change", update); });
    update();
  }
})();
