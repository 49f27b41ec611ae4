// The API key (when the service wants one): asked for once, kept in this browser, sent as a header.
const daasAuth = (() => {
  const STORE = "daas-api-key";
  const panel = document.getElementById("key-panel");
  const field = document.getElementById("api-key");
  if (panel) {
    field.value = localStorage.getItem(STORE) || "";
    document.getElementById("save-key").addEventListener("click", () => {
      localStorage.setItem(STORE, field.value.trim());
      document.getElementById("key-state").textContent = "key saved";
    });
  }
  // fetch() with the key, if one is kept; a 401 points the user at the key field.
  return async function authFetch(url, options = {}) {
    const key = localStorage.getItem(STORE);
    const headers = Object.assign({}, options.headers || {}, key ? { Authorization: "Bearer " + key } : {});
    const response = await fetch(url, Object.assign({}, options, { headers }));
    if (response.status === 401 && panel) {
      document.getElementById("key-state").textContent = "this service needs a valid API key";
      field.focus();
    }
    return response;
  };
})();
