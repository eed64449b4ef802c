// Behaviour for every page, from a file so the Content-Security-Policy can
// refuse inline script: selects marked data-autosubmit submit their form.
document.querySelectorAll("select[data-autosubmit]").forEach(function (select) {
  select.addEventListener("change", function () { select.form.submit(); });
});
// Forms marked data-confirm ask before they submit (deleting, revoking).
document.querySelectorAll("form[data-confirm]").forEach(function (form) {
  form.addEventListener("submit", function (event) {
    if (!window.confirm(form.dataset.confirm)) { event.preventDefault(); }
  });
});
