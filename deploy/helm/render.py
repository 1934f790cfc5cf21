"""Render the enforcer Helm chart with its default values, without helm (tests/tests/deploy.rs).

Supports exactly the template language the chart uses (keep the templates within it):
`{{ .Values.a.b }}`, `{{- ... }}` / `{{ ... -}}` whitespace trimming, `{{- if .Values.a }}` / `{{- if not .Values.a }}` ...
`{{- end }}` (no else, no nesting of ifs inside ifs is needed but works), and
`{{- toYaml .Values.a | nindent N }}`.

Usage: render.py CHART_DIR [--template NAME] [--set key.path=value ...]  -> the manifests on stdout, as helm would
print them (`---` between templates, `# Source:` lines omitted).
"""
import re, sys, os
import yaml

def lookup(values, path):
    cur = {'Values': values}
    for part in path.lstrip('.').split('.'):
        if not isinstance(cur, dict) or part not in cur:
            raise KeyError('no value ' + path)
        cur = cur[part]
    return cur

def to_yaml(v):
    return yaml.safe_dump(v, default_flow_style=False, sort_keys=False).rstrip('\n')

def scalar(v):
    if isinstance(v, bool):
        return 'true' if v else 'false'
    return str(v)

TOKEN = re.compile(r'(\s*)\{\{(-?)\s*(.*?)\s*(-?)\}\}')

def render(text, values):
    out = []
    stack = [True]
    pos = 0
    pending_trim = False
    for m in TOKEN.finditer(text):
        lead, ltrim, expr, rtrim = m.group(1), m.group(2), m.group(3), m.group(4)
        chunk = text[pos:m.start()]
        if pending_trim:
            chunk = chunk.lstrip()
        if all(stack):
            out.append(chunk)
            if not ltrim:
                out.append(lead)
        pos = m.end()
        pending_trim = bool(rtrim)
        if expr.startswith('if not '):
            stack.append(all(stack) and not bool(lookup(values, expr[7:].strip())))
            continue
        if expr.startswith('if '):
            stack.append(all(stack) and bool(lookup(values, expr[3:].strip())))
            continue
        if expr == 'end':
            stack.pop()
            continue
        if not all(stack):
            continue
        mm = re.fullmatch(r'toYaml (\S+) \| nindent (\d+)', expr)
        if mm:
            ind = ' ' * int(mm.group(2))
            out.append('\n' + '\n'.join(ind + l for l in to_yaml(lookup(values, mm.group(1))).split('\n')))
            continue
        if expr.startswith('.Values.'):
            out.append(scalar(lookup(values, expr)))
            continue
        raise ValueError('unsupported template expression: ' + expr)
    rest = text[pos:]
    if pending_trim:
        rest = rest.lstrip()
    out.append(rest)
    return ''.join(out)

def main():
    chart = sys.argv[1]
    values = yaml.safe_load(open(os.path.join(chart, 'values.yaml')))
    only = None
    args = sys.argv[2:]
    if len(args) >= 2 and args[0] == '--template':
        only, args = args[1], args[2:]
    for s in args:
        if s == '--set':
            continue
        k, v = s.split('=', 1)
        d = values
        parts = k.split('.')
        for p in parts[:-1]:
            d = d[p]
        d[parts[-1]] = yaml.safe_load(v)
    docs = []
    tdir = os.path.join(chart, 'templates')
    for name in sorted(os.listdir(tdir)):
        if only is not None and name != only:
            continue
        text = render(open(os.path.join(tdir, name)).read(), values).strip('\n')
        if text.strip() and any(yaml.safe_load_all(text)):
            docs.append(text)
    sys.stdout.write('\n---\n'.join(docs) + '\n')

if __name__ == '__main__':
    main()
