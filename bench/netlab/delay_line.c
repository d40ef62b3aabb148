/*
 * A packet-level delay line for the link emulator (this kernel has no netem).
 *
 * It attaches to a TUN device in the lab's router namespace, reads every IPv4 packet the
 * router sends into it, and writes it back after a fixed one-way delay (one for each
 * direction), dropping a share of packets at random if asked. Policy routing in the router
 * namespace sends every packet that arrives from either side into the TUN device; what comes
 * back out of it is routed normally to the other side. So each TCP connection of the client
 * crosses the delay end to end and sees the round trip, the windows and the losses.
 *
 *   delay_line TUN CLIENT_NET/PREFIX DOWN_DELAY_US UP_DELAY_US DOWN_LOSS UP_LOSS SEED [gso]
 *
 * "Down" is toward the client (destination inside CLIENT_NET), "up" the other way. A loss is a
 * probability per packet (0.001 drops one packet in a thousand). With `gso` the device is
 * opened with a virtio-net header and TCP segmentation offload, so large segments pass
 * through as one read and one write (much less CPU on fast links); a loss then drops a whole
 * segment with the probability that any of its packets would be lost. Packets keep their
 * order within a direction. It prints "ready" once attached, and its counters on SIGTERM.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <linux/virtio_net.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

#define RING_BYTES (64u << 20) /* per direction: far more than rate x delay of any profile */
#define MAX_PACKET (65536 + 64)
#define BATCH 256

struct entry {
  uint64_t due_ns;
  uint32_t len; /* WRAP: the rest of the ring is unused, continue at 0 */
  uint32_t pad;
};
#define WRAP 0xffffffffu

struct ring {
  uint8_t *buf;
  size_t head, tail, used; /* bytes: head is the oldest entry, tail where the next goes */
  uint64_t delay_ns;
  double loss;
  uint64_t packets, bytes, lost, overflow;
};

static volatile sig_atomic_t stop = 0;
static void on_signal(int sig) {
  (void)sig;
  stop = 1;
}

static uint64_t now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}

static uint64_t rng_state = 88172645463325252ull;
static double uniform(void) { /* xorshift64*: reproducible per seed */
  rng_state ^= rng_state >> 12;
  rng_state ^= rng_state << 25;
  rng_state ^= rng_state >> 27;
  return (double)((rng_state * 2685821657736338717ull) >> 11) / 9007199254740992.0;
}

static size_t align8(size_t n) { return (n + 7) & ~(size_t)7; }

/* Append an entry of `len` bytes at the tail (wrapping to the start if needed); 0 if full. */
static int ring_push(struct ring *r, const uint8_t *data, uint32_t len, uint64_t due) {
  size_t need = align8(sizeof(struct entry) + len);
  if (r->used == 0) r->head = r->tail = 0;
  else if (r->tail == r->head) return 0; /* full */
  if (r->tail > r->head || r->used == 0) {
    if (RING_BYTES - r->tail < need) {
      if (r->head < need) return 0;
      if (RING_BYTES - r->tail >= sizeof(struct entry)) ((struct entry *)(r->buf + r->tail))->len = WRAP;
      r->used += RING_BYTES - r->tail;
      r->tail = 0;
    }
  } else if (r->head - r->tail < need) {
    return 0;
  }
  struct entry *e = (struct entry *)(r->buf + r->tail);
  e->due_ns = due;
  e->len = len;
  memcpy(r->buf + r->tail + sizeof(struct entry), data, len);
  r->tail += need;
  r->used += need;
  if (r->tail == RING_BYTES) r->tail = 0;
  return 1;
}

/* The oldest entry, skipping a wrap marker; NULL when empty. */
static struct entry *ring_front(struct ring *r) {
  if (r->used == 0) return NULL;
  if (RING_BYTES - r->head < sizeof(struct entry) || ((struct entry *)(r->buf + r->head))->len == WRAP) {
    r->used -= RING_BYTES - r->head;
    r->head = 0;
    if (r->used == 0) return NULL;
  }
  return (struct entry *)(r->buf + r->head);
}

static void ring_pop(struct ring *r) {
  struct entry *e = (struct entry *)(r->buf + r->head);
  size_t n = align8(sizeof(struct entry) + e->len);
  r->head += n;
  r->used -= n;
  if (r->head == RING_BYTES) r->head = 0;
}

static int open_tun(const char *name, int gso) {
  int fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK);
  if (fd < 0) {
    perror("delay_line: open /dev/net/tun");
    exit(1);
  }
  struct ifreq ifr;
  memset(&ifr, 0, sizeof ifr);
  ifr.ifr_flags = IFF_TUN | IFF_NO_PI | (gso ? IFF_VNET_HDR : 0);
  strncpy(ifr.ifr_name, name, IFNAMSIZ - 1);
  if (ioctl(fd, TUNSETIFF, &ifr) < 0) {
    fprintf(stderr, "delay_line: cannot attach to TUN device %s: %s\n", name, strerror(errno));
    exit(1);
  }
  if (gso) {
    int hdr = sizeof(struct virtio_net_hdr);
    if (ioctl(fd, TUNSETVNETHDRSZ, &hdr) < 0 || ioctl(fd, TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6) < 0) {
      fprintf(stderr, "delay_line: cannot enable offloads on %s: %s\n", name, strerror(errno));
      exit(1);
    }
  }
  return fd;
}

int main(int argc, char **argv) {
  if (argc < 8) {
    fprintf(stderr, "usage: delay_line TUN CLIENT_NET/PREFIX DOWN_DELAY_US UP_DELAY_US DOWN_LOSS UP_LOSS SEED [gso]\n");
    return 2;
  }
  const char *tun = argv[1];
  char net_text[64];
  strncpy(net_text, argv[2], sizeof net_text - 1);
  net_text[sizeof net_text - 1] = 0;
  char *slash = strchr(net_text, '/');
  int prefix = slash ? atoi(slash + 1) : 32;
  if (slash) *slash = 0;
  struct in_addr net_addr;
  if (inet_pton(AF_INET, net_text, &net_addr) != 1 || prefix < 0 || prefix > 32) {
    fprintf(stderr, "delay_line: %s is not an IPv4 network; give it as A.B.C.D/PREFIX\n", argv[2]);
    return 2;
  }
  uint32_t mask = prefix == 0 ? 0 : htonl(~0u << (32 - prefix));
  uint32_t client_net = net_addr.s_addr & mask;
  int gso = argc > 8 && strcmp(argv[8], "gso") == 0;
  size_t hdr = gso ? sizeof(struct virtio_net_hdr) : 0;

  struct ring rings[2]; /* 0: down (to the client), 1: up */
  memset(rings, 0, sizeof rings);
  for (int i = 0; i < 2; i++) {
    rings[i].buf = malloc(RING_BYTES);
    if (!rings[i].buf) {
      fprintf(stderr, "delay_line: out of memory\n");
      return 1;
    }
  }
  rings[0].delay_ns = (uint64_t)(atof(argv[3]) * 1000.0);
  rings[1].delay_ns = (uint64_t)(atof(argv[4]) * 1000.0);
  rings[0].loss = atof(argv[5]);
  rings[1].loss = atof(argv[6]);
  rng_state ^= (uint64_t)strtoull(argv[7], NULL, 10) * 0x9e3779b97f4a7c15ull;
  if (rng_state == 0) rng_state = 1;

  int fd = open_tun(tun, gso);
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_signal;
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGINT, &sa, NULL);
  printf("ready\n");
  fflush(stdout);

  static uint8_t packet[MAX_PACKET];
  uint64_t write_errors = 0;
  /* Packets due within this much are released together: fewer wake-ups for a delay error of
     at most a tenth of the shorter delay, and never more than 200 us. */
  uint64_t shorter = rings[0].delay_ns < rings[1].delay_ns ? rings[0].delay_ns : rings[1].delay_ns;
  uint64_t slack = shorter / 10 < 200000 ? shorter / 10 : 200000;
  while (!stop) {
    uint64_t now = now_ns();
    uint64_t next = UINT64_MAX;
    for (int i = 0; i < 2; i++) {
      struct entry *e;
      while ((e = ring_front(&rings[i])) != NULL && e->due_ns <= now + slack) {
        if (write(fd, (uint8_t *)e + sizeof(struct entry), e->len) < 0) write_errors++;
        ring_pop(&rings[i]);
      }
      if (e != NULL && e->due_ns < next) next = e->due_ns;
    }
    struct pollfd p = {.fd = fd, .events = POLLIN};
    struct timespec wait, *timeout = NULL;
    if (next != UINT64_MAX) {
      uint64_t d = next > now ? next - now : 0;
      wait.tv_sec = (time_t)(d / 1000000000ull);
      wait.tv_nsec = (long)(d % 1000000000ull);
      timeout = &wait;
    }
    int ready = ppoll(&p, 1, timeout, NULL);
    if (ready < 0) {
      if (errno == EINTR) continue;
      perror("delay_line: ppoll");
      return 1;
    }
    if (ready == 0) continue;
    for (int n = 0; n < BATCH; n++) {
      ssize_t len = read(fd, packet, sizeof packet);
      if (len < 0) {
        if (errno == EAGAIN || errno == EINTR) break;
        perror("delay_line: read");
        return 1;
      }
      if ((size_t)len < hdr + 20 || (packet[hdr] >> 4) != 4) continue; /* IPv4 only */
      uint32_t dst;
      memcpy(&dst, packet + hdr + 16, 4);
      struct ring *r = &rings[(dst & mask) == client_net ? 0 : 1];
      r->packets++;
      r->bytes += (uint64_t)(len - hdr);
      if (r->loss > 0) {
        double p_lost = r->loss;
        if (gso) {
          const struct virtio_net_hdr *v = (const struct virtio_net_hdr *)packet;
          if (v->gso_type != VIRTIO_NET_HDR_GSO_NONE && v->gso_size > 0) {
            double segments = ceil((double)(len - hdr) / v->gso_size);
            p_lost = 1.0 - pow(1.0 - r->loss, segments);
          }
        }
        if (uniform() < p_lost) {
          r->lost++;
          continue;
        }
      }
      if (!ring_push(r, packet, (uint32_t)len, now_ns() + r->delay_ns)) r->overflow++;
    }
  }
  fprintf(stderr, "delay_line: down %llu packets %llu bytes %llu lost %llu overflowed; up %llu packets %llu bytes %llu lost %llu overflowed; %llu write errors\n",
          (unsigned long long)rings[0].packets, (unsigned long long)rings[0].bytes, (unsigned long long)rings[0].lost, (unsigned long long)rings[0].overflow,
          (unsigned long long)rings[1].packets, (unsigned long long)rings[1].bytes, (unsigned long long)rings[1].lost, (unsigned long long)rings[1].overflow,
          (unsigned long long)write_errors);
  return 0;
}
