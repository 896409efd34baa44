"""A small short-Weierstrass curve (y^2 = x^3 + ax + b over GF(p)) in affine coordinates,
written from the formulas, so tests can check ctpm's ECC results without ctpm's own code."""


class Curve:
    def __init__(self, p, a, b, g, n, tpm_id):
        self.p, self.a, self.b, self.g, self.n, self.tpm_id = p, a, b, g, n, tpm_id
        self.size = (p.bit_length() + 7) // 8

    def add(self, p1, p2):
        """p1 + p2; None is the point at infinity."""
        if p1 is None:
            return p2
        if p2 is None:
            return p1
        p = self.p
        if p1[0] == p2[0]:
            if (p1[1] + p2[1]) % p == 0:
                return None
            lam = (3 * p1[0] ** 2 + self.a) * pow(2 * p1[1], -1, p)
        else:
            lam = (p2[1] - p1[1]) * pow(p2[0] - p1[0], -1, p)
        x = (lam * lam - p1[0] - p2[0]) % p
        return x, (lam * (p1[0] - x) - p1[1]) % p

    def mul(self, k, point):
        """[k]point by double-and-add."""
        result = None
        for bit in bin(k)[2:]:
            result = self.add(result, result)
            if bit == "1":
                result = self.add(result, point)
        return result

    def on_curve(self, point):
        x, y = point
        return (y * y - x ** 3 - self.a * x - self.b) % self.p == 0

    def xy(self, point):
        return point[0].to_bytes(self.size, "big"), point[1].to_bytes(self.size, "big")

    def ecdsa_verify(self, q, digest, r, s):
        """ECDSA verification (SEC 1 §4.1.4), the digest cut to the order's bit length."""
        n = self.n
        e = int.from_bytes(digest[:(n.bit_length() + 7) // 8], "big")
        if e.bit_length() > n.bit_length():
            e >>= e.bit_length() - n.bit_length()
        if not (0 < r < n and 0 < s < n):
            return False
        w = pow(s, -1, n)
        pt = self.add(self.mul(e * w % n, self.g), self.mul(r * w % n, q))
        return pt is not None and pt[0] % n == r
