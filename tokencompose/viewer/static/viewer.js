// Keyboard: j or → goes to the next sample (or page), k or ← to the previous one (the page's rel links).
(function () {
  "use strict";
  document.addEventListener("keydown", function (event) {
    if (event.defaultPrevented || event.altKey || event.ctrlKey || event.metaKey || event.shiftKey) { return; }
    var target = event.target;
    if (target && (target.isContentEditable || /^(INPUT|TEXTAREA|SELECT|BUTTON)$/.test(target.tagName))) { return; }
    var rel = { j: "next", ArrowRight: "next", k: "prev", ArrowLeft: "prev" }[event.key];
    if (!rel) { return; }
    var link = document.querySelector('a[rel="' + rel + '"]');
    if (link) { event.preventDefault(); window.location.assign(link.href); }
  });
})();

// Gallery: show or hide the mask overlays on the thumbnails.
(function () {
  "use strict";
  var box = document.getElementById("show-overlays");
  var gallery = document.getElementById("gallery");
  if (!box || !gallery) { return; }
  function apply() { gallery.classList.toggle("no-overlays", !box.checked); }
  box.addEventListener("change", apply);
  apply();
})();

// Sample page: toggle each noun's mask overlay, the boxes, and the overlays' opacity.
(function () {
  "use strict";
  var stage = document.getElementById("stage");
  if (!stage) { return; }

  function setMask(noun, visible) {
    stage.querySelectorAll('img.mask[data-noun="' + noun + '"]').forEach(function (img) {
      img.classList.toggle("hidden", !visible);
    });
    document.querySelectorAll('mark.noun[data-noun="' + noun + '"]').forEach(function (mark) {
      mark.classList.toggle("off", !visible);
    });
  }

  var toggles = Array.prototype.slice.call(document.querySelectorAll("input.noun-toggle"));
  toggles.forEach(function (box) {
    box.addEventListener("change", function () { setMask(box.dataset.noun, box.checked); });
    setMask(box.dataset.noun, box.checked);  // the browser may restore checkbox states on reload
  });

  function setAll(visible) {
    toggles.forEach(function (box) { box.checked = visible; setMask(box.dataset.noun, visible); });
  }
  var allOn = document.getElementById("all-on");
  var allOff = document.getElementById("all-off");
  if (allOn) { allOn.addEventListener("click", function () { setAll(true); }); }
  if (allOff) { allOff.addEventListener("click", function () { setAll(false); }); }

  var slider = document.getElementById("opacity");
  var shown = document.getElementById("opacity-value");
  function setOpacity() {
    stage.style.setProperty("--mask-opacity", String(Number(slider.value) / 100));
    if (shown) { shown.textContent = slider.value + "%"; }
  }
  if (slider) { slider.addEventListener("input", setOpacity); setOpacity(); }

  var boxes = document.getElementById("show-boxes");
  function setBoxes() { stage.classList.toggle("hide-boxes", !boxes.checked); }
  if (boxes) { boxes.addEventListener("change", setBoxes); setBoxes(); }

  // Clicking a noun in the caption toggles its mask too.
  document.querySelectorAll("mark.noun").forEach(function (mark) {
    var box = document.querySelector('input.noun-toggle[data-noun="' + mark.dataset.noun + '"]');
    if (!box) { return; }
    mark.style.cursor = "pointer";
    mark.title = "show or hide the mask";
    mark.addEventListener("click", function () { box.checked = !box.checked; setMask(box.dataset.noun, box.checked); });
  });
})();
