/* The pod sandbox's only process, as containerd's sandbox_image runs it: it holds the pod's
 * namespaces open and waits. As PID 1 of its PID namespace a signal without a handler is
 * ignored, so TERM and INT get one (exit at once); SIGCHLD reaps orphans re-parented to it. */
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

static void quit(int sig) { _exit(sig == SIGTERM || sig == SIGINT ? 0 : 1); }

static void reap(int sig) {
  (void)sig;
  while (waitpid(-1, 0, WNOHANG) > 0) {
  }
}

int main(void) {
  struct sigaction term = {.sa_handler = quit};
  struct sigaction chld = {.sa_handler = reap, .sa_flags = SA_NOCLDSTOP};
  sigaction(SIGTERM, &term, 0);
  sigaction(SIGINT, &term, 0);
  sigaction(SIGCHLD, &chld, 0);
  for (;;) pause();
}
