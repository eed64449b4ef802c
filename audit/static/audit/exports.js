// The dashboard's exports list: each export still queued or running is read
// from its API address every two seconds, its bar moved, and the page
// reloaded when one ends (the row then holds the download link or the error).
(function () {
  var table = document.getElementById("export-jobs");
  if (!table) return;
  var rows = table.querySelectorAll("tr[data-job-url]");
  rows.forEach(function (row) {
    var misses = 0, bar = row.querySelector("progress");
    function read() {
      fetch(row.dataset.jobUrl, {credentials: "same-origin", headers: {"Accept": "application/json"}})
        .then(function (r) { if (!r.ok) throw new Error(r.status); return r.json(); })
        .then(function (job) {
          misses = 0;
          if (job.status === "succeeded" || job.status === "failed") { location.reload(); return; }
          if (bar) bar.value = job.percent;
          setTimeout(read, 2000);
        })
        .catch(function () {
          if (++misses < 5) { setTimeout(read, 3000); return; }
          row.querySelector(".job-state").textContent = table.dataset.msgLost;
        });
    }
    setTimeout(read, 1000);
  });
})();
