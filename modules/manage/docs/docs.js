// ByteProxy API page: fetches the OpenAPI document next to this page and
// renders every operation, with a "Try it" form. No dependencies; every
// text goes through textContent, never innerHTML.
"use strict";
(function () {
  var METHODS = ["get", "post", "put", "patch", "delete", "head", "options"];
  var here = location.pathname.replace(/\/+$/, "");          // e.g. /docs or /api/docs
  var base = here.replace(/\/docs$/, "");                       // the gateway's prefix
  var specURL = here + "/openapi.json";
  var spec;

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text != null) e.textContent = text;
    return e;
  }
  // prose renders `code` spans; everything else stays plain text.
  function prose(tag, text) {
    var e = el(tag);
    String(text || "").split("`").forEach(function (part, i) {
      e.appendChild(i % 2 ? el("code", null, part) : document.createTextNode(part));
    });
    return e;
  }
  // markdown renders the little of CommonMark that info.description uses:
  // blocks split by blank lines, "## " headings, "- " list items with a
  // leading **title**, and `code` spans (through prose).
  function markdown(text) {
    var frag = document.createDocumentFragment();
    String(text || "").split(/\n{2,}/).forEach(function (block) {
      var lines = block.split("\n");
      if (/^## /.test(block)) {
        frag.appendChild(prose("h2", block.slice(3)));
      } else if (lines.every(function (l) { return /^- /.test(l); })) {
        var ul = el("ul");
        lines.forEach(function (l) {
          var li = el("li"), m = /^- \*\*(.+?)\*\*\s*(.*)$/.exec(l);
          if (m) {
            li.appendChild(prose("strong", m[1]));
            li.appendChild(document.createTextNode(" "));
          }
          li.appendChild(prose("span", m ? m[2] : l.slice(2)));
          ul.appendChild(li);
        });
        frag.appendChild(ul);
      } else {
        frag.appendChild(prose("p", block));
      }
    });
    return frag;
  }
  function resolve(o) {
    var seen = 0;
    while (o && o.$ref && seen++ < 10) {
      o = o.$ref.replace(/^#\//, "").split("/").reduce(function (acc, k) { return acc && acc[k]; }, spec);
    }
    return o || {};
  }
  function refName(o) { return o && o.$ref ? o.$ref.split("/").pop() : ""; }

  // shape renders a schema as a compact, JSON-like outline.
  function shape(s, depth) {
    depth = depth || 0;
    var ind = "  ".repeat(depth);
    s = resolve(s);
    if (depth > 4) return "…";
    if (s.allOf) {
      var merged = { type: "object", properties: {}, required: [] };
      s.allOf.forEach(function (p) {
        p = resolve(p);
        Object.assign(merged.properties, p.properties || {});
        merged.required = merged.required.concat(p.required || []);
      });
      s = merged;
    }
    if (s.oneOf) return s.oneOf.map(function (p) { return refName(p) || shape(p, depth); }).join(" | ");
    var t = Array.isArray(s.type) ? s.type.join("|") : s.type;
    if (s.properties) {
      var req = s.required || [];
      var lines = Object.keys(s.properties).map(function (k) {
        return ind + "  " + JSON.stringify(k) + (req.indexOf(k) >= 0 ? "" : "?") + ": " + shape(s.properties[k], depth + 1);
      });
      return "{\n" + lines.join(",\n") + "\n" + ind + "}";
    }
    if (t === "array") return shape(s.items, depth) + "[]";
    if (t === "object" && s.additionalProperties) return "{ [key]: " + shape(s.additionalProperties, depth + 1) + " }";
    if (s.const !== undefined) return JSON.stringify(s.const);
    if (s.enum) return s.enum.map(function (v) { return JSON.stringify(v); }).join(" | ");
    return t || "any";
  }

  function paramTable(params) {
    var tb = el("table");
    var hr = el("tr");
    ["name", "in", "type", "description"].forEach(function (h) { hr.appendChild(el("th", null, h)); });
    tb.appendChild(hr);
    params.forEach(function (p) {
      var tr = el("tr");
      tr.appendChild(el("td", "path", p.name + (p.required ? " *" : "")));
      tr.appendChild(el("td", null, p.in));
      tr.appendChild(el("td", null, shape(p.schema)));
      var d = prose("td", p.description);
      tr.appendChild(d);
      tb.appendChild(tr);
    });
    return tb;
  }

  function responses(op) {
    var box = el("div");
    box.appendChild(el("h4", null, "Responses"));
    var tb = el("table");
    Object.keys(op.responses || {}).forEach(function (code) {
      var r = resolve(op.responses[code]);
      var tr = el("tr");
      tr.appendChild(el("td", "code c" + code.charAt(0), code));
      var td = prose("td", r.description);
      var content = r.content || {};
      Object.keys(content).forEach(function (ct) {
        var sc = content[ct].schema;
        td.appendChild(el("div", "muted", ct + (refName(sc) ? " · " + refName(sc) : "")));
        if (sc && (sc.$ref || sc.properties || sc.oneOf || sc.allOf)) td.appendChild(el("pre", null, shape(sc)));
      });
      var hs = Object.keys(r.headers || {});
      if (hs.length) td.appendChild(el("div", "muted", "headers: " + hs.join(", ")));
      tr.appendChild(td);
      tb.appendChild(tr);
    });
    box.appendChild(tb);
    return box;
  }

  function tryIt(method, path, params, op) {
    var form = el("form", "try");
    form.appendChild(el("h4", null, "Try it"));
    var inputs = {};
    params.forEach(function (p) {
      if (p.in !== "path" && p.in !== "query") return;
      var l = el("label", null, p.name + " (" + p.in + ") ");
      var i = el("input");
      i.name = p.name;
      i.placeholder = p.in === "path" ? "required" : "optional";
      l.appendChild(i);
      form.appendChild(l);
      inputs[p.name] = { input: i, where: p.in };
    });
    var extra = el("input");
    var body = null;
    if (method === "get" || method === "delete" || method === "head") {
      var lq = el("label", null, "query string ");
      extra.placeholder = "a=1&b=2";
      lq.appendChild(extra);
      form.appendChild(lq);
    }
    if (op.requestBody) {
      var lb = el("label", null, "body (JSON)");
      body = el("textarea");
      var c = op.requestBody.content || {};
      var ex = c["application/json"] && c["application/json"].example;
      if (ex) body.value = JSON.stringify(ex, null, 2);
      lb.appendChild(body);
      form.appendChild(lb);
    }
    var btn = el("button", null, "Send " + method.toUpperCase());
    btn.type = "submit";
    form.appendChild(btn);
    var out = el("pre");
    out.hidden = true;
    form.appendChild(out);
    form.addEventListener("submit", function (ev) {
      ev.preventDefault();
      var url = path.replace(/\{([^}]+)\}/g, function (_, name) {
        var v = inputs[name] ? inputs[name].input.value : "";
        return name === "path" ? v.replace(/^\/+/, "") : encodeURIComponent(v);
      });
      var q = new URLSearchParams(extra.value || "");
      Object.keys(inputs).forEach(function (k) {
        if (inputs[k].where === "query" && inputs[k].input.value) q.set(k, inputs[k].input.value);
      });
      var headers = {};
      var key = document.getElementById("key").value;
      var tr = document.getElementById("transport").value;
      if (key && tr === "bearer") headers.Authorization = "Bearer " + key;
      if (key && tr === "header") headers["X-API-Key"] = key;
      if (key && tr === "query") q.set("api_key", key);
      var init = { method: method.toUpperCase(), headers: headers };
      if (body && body.value.trim()) { init.body = body.value; headers["Content-Type"] = "application/json"; }
      var qs = q.toString();
      var t0 = performance.now();
      out.hidden = false;
      out.className = "";
      out.textContent = "…";
      fetch(base + url + (qs ? "?" + qs : ""), init).then(function (resp) {
        return resp.text().then(function (text) {
          var hs = [];
          resp.headers.forEach(function (v, k) { hs.push(k + ": " + v); });
          try { text = JSON.stringify(JSON.parse(text), null, 2); } catch (e) { /* not JSON */ }
          out.textContent = resp.status + " " + resp.statusText + " · " + Math.round(performance.now() - t0) + " ms\n" +
            hs.join("\n") + "\n\n" + text;
        });
      }).catch(function (err) { out.className = "error"; out.textContent = String(err); });
    });
    return form;
  }

  function operation(path, method, item, op) {
    var d = el("details", "op" + (op.deprecated ? " deprecated" : ""));
    d.id = (op.operationId || method + path).replace(/[^A-Za-z0-9_-]/g, "_");
    var s = el("summary");
    s.appendChild(el("span", "m m-" + method, method.toUpperCase()));
    s.appendChild(el("span", "path", path));
    s.appendChild(el("span", "muted", op.summary || ""));
    var sec = op.security !== undefined ? op.security : spec.security;
    var keyName = /^\/manage(\/|$)/.test(path) ? "management key" : "proxy key";
    s.appendChild(el("span", "lock", sec && sec.length ? keyName : "public"));
    d.appendChild(s);
    var b = el("div", "body");
    if (op.description) b.appendChild(prose("p", op.description));
    var params = (item.parameters || []).concat(op.parameters || []).map(resolve);
    if (params.length) {
      b.appendChild(el("h4", null, "Parameters"));
      b.appendChild(paramTable(params));
    }
    if (op.requestBody) {
      b.appendChild(el("h4", null, "Request body"));
      var c = op.requestBody.content || {};
      Object.keys(c).forEach(function (ct) {
        b.appendChild(el("div", "muted", ct + (refName(c[ct].schema) ? " · " + refName(c[ct].schema) : "")));
        if (ct === "application/json") b.appendChild(el("pre", null, shape(c[ct].schema)));
      });
    }
    b.appendChild(responses(op));
    b.appendChild(tryIt(method, path, params, op));
    d.appendChild(b);
    return d;
  }

  function render() {
    document.getElementById("speclink").href = specURL;
    document.title = spec.info.title + " " + spec.info.version;
    document.getElementById("title").textContent = spec.info.title + " " + spec.info.version;
    var summary = document.getElementById("summary");
    summary.replaceWith(markdown(spec.info.description || spec.info.summary));
    var main = document.getElementById("ops");
    main.textContent = "";
    var toc = document.getElementById("toc");
    var byTag = {};
    var order = (spec.tags || []).map(function (t) { return t.name; });
    Object.keys(spec.paths).forEach(function (path) {
      var item = spec.paths[path];
      METHODS.forEach(function (m) {
        if (!item[m]) return;
        var tag = (item[m].tags || ["Other"])[0];
        if (order.indexOf(tag) < 0) order.push(tag);
        (byTag[tag] = byTag[tag] || []).push(operation(path, m, item, item[m]));
      });
    });
    order.forEach(function (tag) {
      if (!byTag[tag]) return;
      var h = el("h2", null, tag);
      h.id = "tag-" + tag.replace(/\W/g, "_");
      main.appendChild(h);
      var info = (spec.tags || []).filter(function (t) { return t.name === tag; })[0];
      if (info && info.description) main.appendChild(prose("p", info.description));
      byTag[tag].forEach(function (d) { main.appendChild(d); });
      var a = el("a", null, tag + " (" + byTag[tag].length + ")");
      a.href = "#" + h.id;
      toc.appendChild(a);
    });
    var schemes = spec.components && spec.components.securitySchemes || {};
    // A link to #operationId opens that operation.
    var target = location.hash && document.getElementById(location.hash.slice(1));
    if (target && target.tagName === "DETAILS") { target.open = true; target.scrollIntoView(); }
    var auth = document.getElementById("auth");
    var list = el("div", "hint");
    Object.keys(schemes).forEach(function (k) { list.appendChild(prose("div", schemes[k].description || k)); });
    auth.appendChild(list);
  }

  fetch(specURL, { headers: { Accept: "application/json" } })
    .then(function (r) { if (!r.ok) throw new Error("GET " + specURL + ": " + r.status); return r.json(); })
    .then(function (j) { spec = j; render(); })
    .catch(function (err) {
      var p = document.getElementById("loading");
      p.className = "error";
      p.textContent = "Could not load the API description: " + err.message;
    });
})();
