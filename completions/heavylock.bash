# bash completion for heavylock(1)
# Each command's options as `heavylock --help` lists them (cli/options.c);
# tests/python/test_cli_docs.py checks that none is missing.
_heavylock() {
  local cur prev words cword
  _init_completion 2>/dev/null || {
    cur=${COMP_WORDS[COMP_CWORD]}; prev=${COMP_WORDS[COMP_CWORD-1]}
    words=("${COMP_WORDS[@]}"); cword=$COMP_CWORD
  }
  local sub=${words[1]}
  if [[ $cword -eq 1 ]]; then
    COMPREPLY=($(compgen -W 'run status path gguf doctor --help --version' -- "$cur"))
    return
  fi
  # after "--" in run: complete the command and its arguments
  local i
  for ((i = 2; i < cword; i++)); do
    if [[ ${words[i]} == -- ]]; then
      if [[ $((i + 1)) -eq $cword ]]; then
        COMPREPLY=($(compgen -c -- "$cur"))
      else
        COMPREPLY=($(compgen -f -- "$cur"))
      fi
      return
    fi
  done
  case $prev in
    -L|--lock) COMPREPLY=($(compgen -f -- "$cur")); return ;;
    -r|--root) COMPREPLY=($(compgen -d -- "$cur")); return ;;
    --slots) COMPREPLY=($(compgen -W 'auto 1 2 4' -- "$cur")); return ;;
    --budget) COMPREPLY=($(compgen -W 'auto' -- "$cur")); return ;;
    -w|--timeout|--wait|-E|--conflict-exit-code|-l|--label|--mem|--ctx) return ;;
  esac
  case $sub in
    run)
      local opts='-n --nonblock --nb -w --timeout --wait -E --conflict-exit-code -l --label'
      opts+=' -o --close -v --verbose -q --quiet --slots --mem --budget -L --lock -r --root'
      opts+=' -h --help --'
      COMPREPLY=($(compgen -W "$opts" -- "$cur")) ;;
    status) COMPREPLY=($(compgen -W '-L --lock -r --root -j --json -h --help' -- "$cur")) ;;
    path) COMPREPLY=($(compgen -W '-r --root -h --help' -- "$cur")) ;;
    gguf)
      if [[ $cur == -* ]]; then
        COMPREPLY=($(compgen -W '--ctx -h --help' -- "$cur"))
      else
        COMPREPLY=($(compgen -f -X '!*.gguf' -- "$cur") $(compgen -d -- "$cur"))
      fi ;;
    doctor)
      COMPREPLY=($(compgen -W '-L --lock -r --root -h --help' -- "$cur") $(compgen -f -- "$cur")) ;;
  esac
}
complete -F _heavylock heavylock
