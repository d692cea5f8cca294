"""Shell completion scripts for the command line, generated from its argparse parser (pure; no dependency).

``servicekey-operator completion bash`` prints a script for bash; ``completion zsh`` the same script behind
zsh's ``bashcompinit``. They complete the subcommands, their flags and the values of flags with choices from
the parser itself; namespaces, contexts and ServiceKey names come from ``kubectl`` when it is installed.
"""

from __future__ import annotations

import argparse
import shlex

COMMAND_NAMES = ("servicekey-operator", "kubectl-servicekey")
FUNCTION = "_servicekey_operator"
# Flags whose value comes from the cluster or the file system, not from a fixed list.
_DYNAMIC_VALUES = {
    "--namespace": 'COMPREPLY=($(compgen -W "$(kubectl get namespaces -o name 2>/dev/null | sed "s|^namespace/||")"'
                   ' -- "$cur"))',
    "--context": 'COMPREPLY=($(compgen -W "$(kubectl config get-contexts -o name 2>/dev/null)" -- "$cur"))',
    "--kubeconfig": 'COMPREPLY=($(compgen -f -- "$cur"))',
}


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _quote_words(words: list[str]) -> str:
    return shlex.quote(" ".join(words))


def _command_case(name: str, sub: argparse.ArgumentParser) -> list[str]:
    """The bash ``case`` arms for one subcommand: values of flags, then flags, then positionals."""
    flags = sorted(option for action in sub._actions for option in action.option_strings)
    value_arms: list[str] = []
    for action in sub._actions:
        if not action.option_strings or action.nargs == 0:
            continue
        pattern = "|".join(action.option_strings)
        long_name = next((o for o in action.option_strings if o.startswith("--")), "")
        if action.choices:
            reply = f'COMPREPLY=($(compgen -W {_quote_words([str(c) for c in action.choices])} -- "$cur"))'
        else:
            reply = _DYNAMIC_VALUES.get(long_name, "COMPREPLY=()")
        value_arms.append(f"                {pattern}) {reply}; return ;;")
    positionals = [action for action in sub._actions if not action.option_strings]
    positional = positionals[0] if positionals else None
    if positional is not None and positional.choices:
        words = _quote_words([str(c) for c in positional.choices])
        positional_reply = f'COMPREPLY=($(compgen -W {words} -- "$cur"))'
    elif positional is not None and positional.dest == "name":
        positional_reply = ('COMPREPLY=($(compgen -W "$(kubectl get servicekeys.servicekey.io ${namespace:+-n '
                            '"$namespace"} -o name 2>/dev/null | sed "s|^.*/||")" -- "$cur"))')
    else:
        positional_reply = "COMPREPLY=()"
    value_case = ['            case "$prev" in', *value_arms, "            esac"] if value_arms else []
    return [
        f"        {name})",
        *value_case,
        '            if [[ "$cur" == -* ]]; then',
        f'                COMPREPLY=($(compgen -W {_quote_words(flags)} -- "$cur"))',
        "            else",
        f"                {positional_reply}",
        "            fi",
        "            ;;",
    ]


def bash_script(parser: argparse.ArgumentParser) -> str:
    """A bash completion script for ``parser``'s subcommands and flags (``source <(... completion bash)``)."""
    subcommands = _subcommands(parser)
    lines = [
        "# bash completion for servicekey-operator and kubectl-servicekey (generated: servicekey-operator "
        "completion bash)",
        f"{FUNCTION}() {{",
        '    local cur="${COMP_WORDS[COMP_CWORD]}" prev="${COMP_WORDS[COMP_CWORD-1]}"',
        '    local command="" namespace="" i',
        "    for ((i = 1; i < COMP_CWORD; i++)); do",
        '        case "${COMP_WORDS[i]}" in',
        '            -n|--namespace) namespace="${COMP_WORDS[i+1]}"; ((i++)) ;;',
        '            --namespace=*) namespace="${COMP_WORDS[i]#--namespace=}" ;;',
        "            -*) ;;",
        '            *) [[ -z "$command" ]] && command="${COMP_WORDS[i]}" ;;',
        "        esac",
        "    done",
        '    if [[ -z "$command" ]]; then',
        f'        COMPREPLY=($(compgen -W {_quote_words([*subcommands, "-h", "--help"])} -- "$cur"))',
        "        return",
        "    fi",
        '    case "$command" in',
    ]
    for name, sub in subcommands.items():
        lines += _command_case(name, sub)
    lines += [
        "    esac",
        "}",
        f"complete -F {FUNCTION} {' '.join(COMMAND_NAMES)}",
    ]
    return "\n".join(lines) + "\n"


def zsh_script(parser: argparse.ArgumentParser) -> str:
    """The bash script behind zsh's bash completion emulation (``source <(... completion zsh)``)."""
    return (f"#compdef {' '.join(COMMAND_NAMES)}\n"
            "# zsh completion for servicekey-operator and kubectl-servicekey (generated: servicekey-operator "
            "completion zsh)\n"
            "(( $+functions[compdef] )) || { autoload -U +X compinit && compinit; }\n"
            "autoload -U +X bashcompinit && bashcompinit\n" + bash_script(parser))


SCRIPTS = {"bash": bash_script, "zsh": zsh_script}
