// Filter the prompt sections by text; hide clusters left empty. No network, no libraries.
(function () {
  var box = document.getElementById("filter");
  var count = document.getElementById("count");
  var prompts = Array.prototype.slice.call(document.querySelectorAll(".prompt"));
  var clusters = Array.prototype.slice.call(document.querySelectorAll(".cluster"));
  function update() {
    var q = box.value.trim().toLowerCase();
    var shown = 0;
    prompts.forEach(function (p) {
      var hit = !q || p.getAttribute("data-prompt").indexOf(q) !== -1;
      p.classList.toggle("hidden", !hit);
      if (hit) shown += 1;
    });
    clusters.forEach(function (c) {
      c.classList.toggle("hidden", !c.querySelector(".prompt:not(.hidden)"));
    });
    count.textContent = shown + " of " + prompts.length + " prompts";
  }
  box.addEventListener("input", update);
  update();
})();
