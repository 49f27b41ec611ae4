// Upload form: POST the files to /api/jobs, then poll the job and fill each row in place.
(() => {
  const form = document.getElementById("upload");
  const input = document.getElementById("images");
  const message = document.getElementById("message");
  const progress = document.getElementById("progress");
  const table = document.getElementById("results");
  const body = table.querySelector("tbody");

  function cell(row, text, cls) {
    const td = row.insertCell();
    td.textContent = text;
    if (cls) td.className = cls;
    return td;
  }

  function addRow(image, file) {
    const row = body.insertRow();
    row.id = "image-" + image.id;
    row.dataset.status = "queued";
    const thumb = row.insertCell();
    if (file) {
      const img = document.createElement("img");
      img.src = URL.createObjectURL(file);
      img.alt = "";
      thumb.appendChild(img);
    }
    cell(row, image.name, "name");
    cell(row, "…", "label");
    cell(row, "", "score");
    cell(row, "queued", "status");
  }

  function fillRow(image) {
    const row = document.getElementById("image-" + image.id);
    if (!row || row.dataset.status === image.status) return;
    row.dataset.status = image.status;
    row.className = image.status;
    row.querySelector(".status").textContent = image.status;
    const label = row.querySelector(".label");
    if (image.status === "done") {
      label.textContent = "";
      const details = document.createElement("details");
      const summary = document.createElement("summary");
      summary.textContent = image.label;
      details.appendChild(summary);
      const list = document.createElement("ol");
      for (const [name, prob] of image.top5) {
        const item = document.createElement("li");
        item.textContent = `${name} (${(prob * 100).toFixed(1)}%)`;
        list.appendChild(item);
      }
      details.appendChild(list);
      label.appendChild(details);
      row.querySelector(".score").textContent = (image.score * 100).toFixed(1) + "%";
    } else if (image.status === "error") {
      label.textContent = image.error;
    }
  }

  async function poll(jobId) {
    let delay = 200;
    for (;;) {
      const response = await daasAuth("/api/jobs/" + jobId);
      if (!response.ok) {
        message.textContent = "Lost track of the job: HTTP " + response.status;
        return;
      }
      const job = await response.json();
      job.images.forEach(fillRow);
      progress.textContent = `${job.finished} of ${job.total} images finished`;
      if (job.status === "done") return;
      await new Promise((resolve) => setTimeout(resolve, delay));
      delay = Math.min(delay * 1.25, 2000);
    }
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const files = Array.from(input.files);
    if (!files.length) return;
    message.textContent = `Uploading ${files.length} image(s)…`;
    const data = new FormData();
    files.forEach((file) => data.append("images", file, file.name));
    let response;
    try {
      response = await daasAuth("/api/jobs", { method: "POST", body: data });
    } catch (error) {
      message.textContent = "Upload failed: " + error;
      return;
    }
    const payload = await response.json().catch(() => ({ error: "HTTP " + response.status }));
    if (!response.ok) {
      message.textContent = "Upload rejected: " + payload.error;
      return;
    }
    message.textContent = "";
    table.hidden = false;
    payload.images.forEach((image, i) => addRow(image, files.find((f) => f.name.endsWith(image.name)) || files[i]));
    input.value = "";
    poll(payload.job_id);
  });
})();

// Status panel: queue, workers and throughput from /api/status, every 2 s.
(() => {
  const set = (id, value) => { document.getElementById(id).textContent = value; };
  async function refresh() {
    try {
      const status = await (await daasAuth("/api/status")).json();
      set("st-visible", status.queue.visible);
      set("st-in-flight", status.queue.in_flight);
      set("st-running", status.workers.running);
      set("st-starting", status.workers.starting);
      const rates = status.images_per_minute;
      set("st-rate", rates ? rates[rates.length - 1] : "n/a");
      set("st-rate-history", rates ? "(last minutes: " + rates.join(", ") + ")" : "(Flower unreachable)");
      document.getElementById("st-flower").href = status.flower_url;
    } catch (error) {
      set("st-rate-history", "(status unavailable)");
    }
  }
  refresh();
  setInterval(refresh, 2000);
})();
