// Renders /openapi.json as a page: every path and method, its parameters, body and responses.

const el = (tag, attrs = {}, ...children) => {
  const e = Object.assign(document.createElement(tag), attrs);
  e.append(...children);
  return e;
};

function schemaText(schema) {
  return JSON.stringify(schema, null, 2);
}

async function main() {
  const spec = await (await fetch("/openapi.json")).json();
  const root = document.getElementById("api");
  root.replaceChildren(el("h2", {}, `${spec.info.title} ${spec.info.version}`), el("p", {}, spec.info.description));
  for (const [path, item] of Object.entries(spec.paths)) {
    for (const [method, op] of Object.entries(item)) {
      const box = el("div", { className: `op ${method}` });
      box.append(el("h3", {}, el("span", { className: "method" }, method), el("code", {}, path)), el("p", {}, op.summary));
      if (op.parameters?.length) {
        const rows = op.parameters.map((p) => el("tr", {}, el("td", {}, el("code", {}, p.name)), el("td", {}, p.in),
          el("td", {}, p.required ? "required" : ""), el("td", {}, p.description || "")));
        box.append(el("table", {}, el("tbody", {}, ...rows)));
      }
      if (op.requestBody) {
        for (const [media, body] of Object.entries(op.requestBody.content)) {
          box.append(el("p", {}, `Body (${media}):`), el("pre", {}, schemaText(body.schema)));
        }
      }
      const responses = Object.entries(op.responses).map(([code, r]) => `${code}: ${r.description}`).join(" · ");
      box.append(el("p", {}, el("small", {}, responses)));
      root.append(box);
    }
  }
  root.append(el("h2", {}, "Schemas"));
  for (const [name, schema] of Object.entries(spec.components.schemas)) {
    root.append(el("h3", { id: `schema-${name}` }, name), el("pre", {}, schemaText(schema)));
  }
}

main().catch((err) => { document.getElementById("api").textContent = `Could not load the description: ${err}`; });
