// The model picker's description line: the selected model's description and price per
// 1M input/output tokens, from the option's data attributes (server-rendered text, set with
// textContent). The line is the select's aria-describedby.

export function showModelInfo(select, target) {
  const option = select.selectedOptions[0];
  if (!option || !target) return;
  const description = target.querySelector(".model-info-description") || document.createElement("span");
  const price = target.querySelector(".model-info-price") || document.createElement("span");
  description.className = "model-info-description";
  price.className = "model-info-price";
  description.textContent = option.dataset.description || "";
  price.textContent = option.dataset.price || "";
  target.replaceChildren(description, document.createTextNode(" "), price);
}

const picker = document.getElementById("model-picker");
const info = document.getElementById("model-info");
if (picker && info) {
  showModelInfo(picker, info);
  picker.addEventListener("change", () => showModelInfo(picker, info));
}
