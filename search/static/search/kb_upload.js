// Upload with visible progress (XHR); the page's messages come from the
// form's data-msg-* attributes, so they are translated with the page.
(function () {
  var form = document.getElementById("upload-form");
  if (!form || !window.FormData) return;
  var text = form.dataset;
  form.addEventListener("submit", function (event) {
    event.preventDefault();
    var status = document.getElementById("upload-status"), bar = document.getElementById("upload-progress"),
        message = document.getElementById("upload-message");
    status.hidden = false; bar.value = 0; message.textContent = text.msgUploading;
    var xhr = new XMLHttpRequest();
    xhr.open("POST", form.action);
    xhr.upload.onprogress = function (e) {
      if (e.lengthComputable) { bar.value = Math.round(90 * e.loaded / e.total); }
    };
    xhr.upload.onload = function () { message.textContent = text.msgEmbedding; };
    xhr.onload = function () {
      var body = {};
      try { body = JSON.parse(xhr.responseText); } catch (e) {}
      if (xhr.status === 200) { bar.value = 100; message.textContent = body.message; setTimeout(function () { location.reload(); }, 800); }
      else { bar.value = 0; message.textContent = body.detail || (text.msgFailed + " (" + xhr.status + ")"); }
    };
    xhr.onerror = function () { message.textContent = text.msgInterrupted; };
    xhr.send(new FormData(form));
  });
})();
