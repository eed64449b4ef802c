// Upload with visible progress: the file goes up by XHR (the bar's first
// tenth), the portal answers 202 with the import's address, and the page
// reads that address every second while the task worker embeds the entries
// (the rest of the bar). The page's messages come from the form's data-msg-*
// attributes and from the portal's answers, so they are in the page's
// language. The button stays disabled while an upload or its import is under
// way (a double click sends one upload); a failure shows as an error.
(function () {
  var form = document.getElementById("upload-form");
  if (!form || !window.FormData) return;
  var text = form.dataset, button = form.querySelector("button[type=submit]"), busy = false;
  var status = document.getElementById("upload-status"), bar = document.getElementById("upload-progress"),
      message = document.getElementById("upload-message");
  function sentence(s) { s = String(s || ""); return s.charAt(0).toUpperCase() + s.slice(1); }
  function show(words, failed) {
    message.textContent = failed ? sentence(words) : words;
    message.className = failed ? "upload-error" : "muted";
    message.setAttribute("role", failed ? "alert" : "status");
  }
  function start() { busy = true; button.disabled = true; form.setAttribute("aria-busy", "true"); }
  function done() { busy = false; button.disabled = false; form.removeAttribute("aria-busy"); }

  // Follow one import until it ends; a few failed reads in a row end the watch.
  function follow(url) {
    var misses = 0;
    function read() {
      fetch(url, {credentials: "same-origin", headers: {"Accept": "application/json"}})
        .then(function (r) { if (!r.ok) throw new Error(r.status); return r.json(); })
        .then(function (job) {
          misses = 0;
          if (job.status === "succeeded") {
            // The button stays disabled until the page reloads with the new entries.
            bar.value = 100; show(job.message, false); setTimeout(function () { location.reload(); }, 800);
          } else if (job.status === "failed") {
            bar.value = 0; show(job.message, true); done();
          } else {
            bar.value = job.percent;
            show(job.message, false); setTimeout(read, 1000);
          }
        })
        .catch(function () {
          if (++misses < 5) { setTimeout(read, 2000); } else { show(text.msgLost, true); done(); }
        });
    }
    read();
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    if (busy) return;
    start();
    status.hidden = false; bar.value = 0; show(text.msgUploading, false);
    var xhr = new XMLHttpRequest();
    xhr.open("POST", form.action);
    xhr.upload.onprogress = function (e) {
      if (e.lengthComputable) { bar.value = Math.round(10 * e.loaded / e.total); }
    };
    xhr.upload.onload = function () { show(text.msgEmbedding, false); };
    xhr.onload = function () {
      var body = {};
      try { body = JSON.parse(xhr.responseText); } catch (e) {}
      if (xhr.status === 202 && body.url) {
        bar.value = 10; show(body.message, false); follow(body.url);
      } else {
        bar.value = 0; show(body.detail || (text.msgFailed + " (" + xhr.status + ")"), true); done();
      }
    };
    xhr.onerror = function () { bar.value = 0; show(text.msgInterrupted, true); done(); };
    xhr.send(new FormData(form));
  });

  // An import still under way when the page was opened: follow it too.
  if (status.dataset.jobUrl) { start(); follow(status.dataset.jobUrl); }
})();
