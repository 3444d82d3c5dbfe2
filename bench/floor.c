/* floor.c: the benchmark's floor, the least a worker agent can do.
 *
 * One libcurl easy handle, reused for every request: it POSTs the
 * heartbeat every HEARTBEAT_S seconds and GETs the poll every POLL_S
 * seconds, and sleeps in between. Responses are read and dropped. With
 * CAINFO, that file is the only CA store (no CA directory), so that libcurl
 * keeps the parsed store in its cache across connections.
 *
 *   floor URL MACHINE_ID HEARTBEAT_S POLL_S [CAINFO]
 *
 * Linux only (bench/ is): it is not part of goliat-host.
 */
#define _POSIX_C_SOURCE 200809L
#include <curl/curl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static volatile sig_atomic_t stop;

static void on_term(int sig) {
  (void)sig;
  stop = 1;
}

static size_t drop(char *data, size_t size, size_t n, void *ud) {
  (void)data;
  (void)ud;
  return size * n;
}

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static void sleep_until(double t) {
  double d = t - now();
  if (d <= 0)
    return;
  struct timespec ts;
  ts.tv_sec = (time_t)d;
  ts.tv_nsec = (long)((d - (double)ts.tv_sec) * 1e9);
  nanosleep(&ts, NULL);
}

int main(int argc, char **argv) {
  if (argc < 5 || argc > 6) {
    fputs("usage: floor URL MACHINE_ID HEARTBEAT_S POLL_S [CAINFO]\n", stderr);
    return 2;
  }
  const char *base = argv[1], *id = argv[2];
  double beat_every = atof(argv[3]), poll_every = atof(argv[4]);
  if (!(beat_every > 0 && poll_every > 0)) {
    fputs("floor: the intervals must be > 0\n", stderr);
    return 2;
  }
  signal(SIGTERM, on_term);
  signal(SIGINT, on_term);
  curl_global_init(CURL_GLOBAL_DEFAULT);
  CURL *e = curl_easy_init();
  char beat_url[1024], poll_url[1024], body[512];
  snprintf(beat_url, sizeof beat_url, "%s/api/heartbeat", base);
  snprintf(poll_url, sizeof poll_url, "%s/api/assignment?machineId=%s", base,
           id);
  int body_len = snprintf(body, sizeof body, "{\"machineId\":\"%s\"}", id);
  struct curl_slist *json =
      curl_slist_append(NULL, "Content-Type: application/json");
  curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, drop);
  curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(e, CURLOPT_TIMEOUT, 30L);
  if (argc == 6) {
    curl_easy_setopt(e, CURLOPT_CAINFO, argv[5]);
    curl_easy_setopt(e, CURLOPT_CAPATH, NULL);
  }
  double next_beat = now(), next_poll = next_beat;
  while (!stop) {
    if (now() >= next_beat) {
      curl_easy_setopt(e, CURLOPT_URL, beat_url);
      curl_easy_setopt(e, CURLOPT_HTTPHEADER, json);
      curl_easy_setopt(e, CURLOPT_POSTFIELDS, body);
      curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE, (long)body_len);
      CURLcode rc = curl_easy_perform(e);
      if (rc != CURLE_OK)
        fprintf(stderr, "floor: heartbeat: %s\n", curl_easy_strerror(rc));
      next_beat += beat_every;
    }
    if (now() >= next_poll) {
      curl_easy_setopt(e, CURLOPT_URL, poll_url);
      curl_easy_setopt(e, CURLOPT_HTTPHEADER, NULL);
      curl_easy_setopt(e, CURLOPT_HTTPGET, 1L);
      CURLcode rc = curl_easy_perform(e);
      if (rc != CURLE_OK)
        fprintf(stderr, "floor: poll: %s\n", curl_easy_strerror(rc));
      next_poll += poll_every;
    }
    sleep_until(next_beat < next_poll ? next_beat : next_poll);
  }
  curl_slist_free_all(json);
  curl_easy_cleanup(e);
  curl_global_cleanup();
  return 0;
}
