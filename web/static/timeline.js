// The scaling timeline's plot is fetched with the API key (an <img src> could not send it), then shown.
// A file of its own, not inline: the Content-Security-Policy lets only the service's own scripts run.
(() => {
  const img = document.getElementById("timeline");
  daasAuth(img.dataset.plot).then(async (response) => {
    if (response.ok) img.src = URL.createObjectURL(await response.blob());
    else img.alt = await response.text();
  });
})();
