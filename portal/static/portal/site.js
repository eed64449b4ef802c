// Behaviour for every page, from a file so the Content-Security-Policy can
// refuse inline script: selects marked data-autosubmit submit their form.
// The language select, on a page that answered a search form (marked
// data-keep-on-language), switches in the background and then re-posts that
// form: the results come back in the new language, and the question stays in
// a POST body, never in a URL or a log.
document.querySelectorAll("select[data-autosubmit]").forEach(function (select) {
  select.addEventListener("change", function () {
    var keep = select.hasAttribute("data-language") && document.querySelector("form[data-keep-on-language]");
    if (!keep || !window.fetch) { select.form.submit(); return; }
    fetch(select.form.action, { method: "POST", body: new FormData(select.form), credentials: "same-origin" })
      .then(function (response) {
        if (response.ok) { keep.submit(); } else { select.form.submit(); }
      }, function () { select.form.submit(); });
  });
});
// Forms marked data-confirm ask before they submit (deleting, revoking).
document.querySelectorAll("form[data-confirm]").forEach(function (form) {
  form.addEventListener("submit", function (event) {
    if (!window.confirm(form.dataset.confirm)) { event.preventDefault(); }
  });
});
