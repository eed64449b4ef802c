// Upload with visible progress (XHR); the page's messages come from the
// form's data-msg-* attributes, so they are translated with the page.
// The button is disabled while a request is in flight (a double click sends
// one upload), and a failure is shown as an error, not as progress.
(function () {
  var form = document.getElementById("upload-form");
  if (!form || !window.FormData) return;
  var text = form.dataset, button = form.querySelector("button[type=submit]"), busy = false;
  function sentence(s) { s = String(s || ""); return s.charAt(0).toUpperCase() + s.slice(1); }
  function show(message, words, failed) {
    message.textContent = failed ? sentence(words) : words;
    message.className = failed ? "upload-error" : "muted";
    message.setAttribute("role", failed ? "alert" : "status");
  }
  function done() { busy = false; button.disabled = false; form.removeAttribute("aria-busy"); }
  form.addEventListener("submit", function (event) {
    event.preventDefault();
    if (busy) return;
    busy = true; button.disabled = true; form.setAttribute("aria-busy", "true");
    var status = document.getElementById("upload-status"), bar = document.getElementById("upload-progress"),
        message = document.getElementById("upload-message");
    status.hidden = false; bar.value = 0; show(message, text.msgUploading, false);
    var xhr = new XMLHttpRequest();
    xhr.open("POST", form.action);
    xhr.upload.onprogress = function (e) {
      if (e.lengthComputable) { bar.value = Math.round(90 * e.loaded / e.total); }
    };
    xhr.upload.onload = function () { show(message, text.msgEmbedding, false); };
    xhr.onload = function () {
      var body = {};
      try { body = JSON.parse(xhr.responseText); } catch (e) {}
      if (xhr.status === 200) {
        // The button stays disabled until the page reloads with the new entries.
        bar.value = 100; show(message, body.message, false); setTimeout(function () { location.reload(); }, 800);
      } else {
        bar.value = 0; show(message, body.detail || (text.msgFailed + " (" + xhr.status + ")"), true); done();
      }
    };
    xhr.onerror = function () { bar.value = 0; show(message, text.msgInterrupted, true); done(); };
    xhr.send(new FormData(form));
  });
})();
