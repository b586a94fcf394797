module codex-operator.local/pause

go 1.22
